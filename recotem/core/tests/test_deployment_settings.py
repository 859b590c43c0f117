"""Deployment defaults as a fresh process reads them from its environment (settings are read once
at start-up, so each case is a new interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from recotem.testing.processes import process_env

_PRINT = (
    "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps("
    "{'hosts': s.ALLOWED_HOSTS, 'session': s.SESSION_COOKIE_SECURE, 'csrf': s.CSRF_COOKIE_SECURE,"
    " 'hsts': s.SECURE_HSTS_SECONDS, 'proxy': s.SECURE_PROXY_SSL_HEADER,"
    " 'nosniff': s.SECURE_CONTENT_TYPE_NOSNIFF, 'body': s.DATA_UPLOAD_MAX_MEMORY_SIZE}))"
)


def _settings(tmp_path: Path, **env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PRINT],
        env=process_env(tmp_path / "data", DJANGO_SETTINGS_MODULE="recotem.settings", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_it_answers_only_local_host_names_and_plain_http_by_default(tmp_path: Path) -> None:
    got = _settings(tmp_path, RECOTEM_ALLOWED_HOSTS="", RECOTEM_HTTPS="")
    assert got["hosts"] == ["localhost", "127.0.0.1", "[::1]"]
    assert (got["session"], got["csrf"], got["hsts"], got["proxy"]) == (False, False, 0, None)
    assert got["nosniff"] is True and got["body"] == 2_621_440


def test_it_turns_on_secure_cookies_hsts_and_the_proxy_header_with_recotem_https(
    tmp_path: Path,
) -> None:
    got = _settings(tmp_path, RECOTEM_HTTPS="1", RECOTEM_ALLOWED_HOSTS="recs.example.com")
    assert got["hosts"] == ["recs.example.com"]
    assert (got["session"], got["csrf"]) == (True, True)
    assert got["hsts"] == 365 * 24 * 3600
    assert got["proxy"] == ["HTTP_X_FORWARDED_PROTO", "https"]
