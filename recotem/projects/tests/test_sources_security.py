"""Data sources cannot write, cannot escape the allow list, and never repeat what they fetched."""

from __future__ import annotations

import http.server
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.sources import SourceError, source_check, source_read

pytestmark = pytest.mark.django_db


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def shop(tmp_path: Path, settings: Any) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir()
    db = folder / "events.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events (user_id, item_id, timestamp)")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(u, i, 1_600_000_000 + u + i) for u in range(1, 21) for i in range(1, 11)],
        )
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = [f"sqlite:{folder}"]
    return db


@pytest.mark.parametrize(
    "query",
    [
        "VACUUM INTO '{outside}'",
        "ATTACH DATABASE '{outside}' AS other",
        "CREATE TABLE evil (x)",
        "DROP TABLE events",
        "DELETE FROM events",
        "INSERT INTO events VALUES (1, 2, 3)",
        "SELECT * FROM events; DROP TABLE events",
        "PRAGMA journal_mode=DELETE",
        "WITH x AS (SELECT 1) DELETE FROM events",
    ],
)
def test_it_refuses_sqlite_statements_that_write_before_they_run(
    project: Project, shop: Path, tmp_path: Path, query: str
) -> None:
    outside = tmp_path / "elsewhere" / "copy.db"
    outside.parent.mkdir()
    before = _snapshot(shop.parent)
    source = DataSource.objects.create(
        project=project, kind="sql", url=f"sqlite:///{shop}", query=query.format(outside=outside)
    )
    with pytest.raises(SourceError) as caught:
        source_read(source=source)
    assert not caught.value.retryable
    assert _snapshot(shop.parent) == before  # nothing written, nothing created beside it
    assert list(outside.parent.iterdir()) == []
    assert TrainingData.objects.count() == 0


def test_it_reads_a_sqlite_select(project: Project, shop: Path) -> None:
    before = _snapshot(shop.parent)
    source = DataSource.objects.create(
        project=project, kind="sql", url=f"sqlite:///{shop}", query="SELECT * FROM events;"
    )
    data = source_read(source=source)
    assert data.row_count == 200
    assert _snapshot(shop.parent) == before


def test_it_stops_a_sql_source_at_the_row_limit(
    project: Project, shop: Path, settings: Any
) -> None:
    settings.RECOTEM_MAX_ROWS = 100
    source = DataSource.objects.create(
        project=project, kind="sql", url=f"sqlite:///{shop}", query="SELECT * FROM events"
    )
    with pytest.raises(SourceError, match="row limit"):
        source_read(source=source)


@pytest.mark.skipif(
    not django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
    reason="Recotem's own database must be PostgreSQL for this case (the PostgreSQL run)",
)
def test_it_refuses_any_database_on_recotems_own_postgresql_server(settings: Any) -> None:
    own = settings.DATABASES["default"]
    port = own.get("PORT") or 5432
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["*", "127.0.0.1", "localhost"]
    for name in ("postgres", "template1", "some_other_db"):
        for host in ("127.0.0.1", "localhost"):
            url = f"postgresql://postgres@{host}:{port}/{name}"
            with pytest.raises(Exception, match="Recotem's own|own database") as caught:
                source_check(kind="sql", url=url, query="SELECT 1")
            assert getattr(caught.value, "field", "url") == "url"


# --- URL sources ---------------------------------------------------------------------------


class _Site(http.server.BaseHTTPRequestHandler):
    body = b"user_id,item_id\n1,2\n"
    redirect_to: str | None = None
    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.server.server_address[0])  # type: ignore[index]
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(address: str, port: int, handler: type) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def sites() -> Iterator[tuple[int, type[_Site]]]:
    """The same port on 127.0.0.2 (the allowed host) and 127.0.0.1 (what rebinding aims at)."""

    class Site(_Site):
        hits: list[str] = []
        redirect_to = None

    for _ in range(20):
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            servers = [_serve("127.0.0.2", port, Site), _serve("127.0.0.1", port, Site)]
            break
        except OSError:
            continue
    yield port, Site
    for s in servers:
        s.shutdown()
        s.server_close()


def _rebinding_dns(monkeypatch: Any, name: str, answers: list[str]) -> list[int]:
    """getaddrinfo answering `name` from `answers` in turn (the last repeats); counts calls."""
    real = socket.getaddrinfo
    calls = [0]

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        ip = answers[min(calls[0], len(answers) - 1)]
        calls[0] += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_a_rebinding_resolver_cannot_send_a_source_to_loopback(
    project: Project, sites: tuple[int, type[_Site]], settings: Any, monkeypatch: Any
) -> None:
    port, site = sites
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    # First answer passes the check; every later one points at loopback.
    _rebinding_dns(monkeypatch, "shop.example", ["127.0.0.2", "127.0.0.1"])
    source = DataSource.objects.create(
        project=project, kind="url", url=f"http://shop.example:{port}/events.csv"
    )
    # The check before the read sees 127.0.0.2; a client that resolves again to connect
    # would reach 127.0.0.1. safehttp resolves once more and connects to what it checked:
    # that answer is loopback, so it refuses instead of connecting.
    with pytest.raises(SourceError, match="loopback"):
        source_read(source=source)
    assert "127.0.0.1" not in site.hits
    # Each fetch connects to the address its own check saw (the allowed one).
    _rebinding_dns(monkeypatch, "shop.example", ["127.0.0.2", "127.0.0.2", "127.0.0.1"])
    with pytest.raises(SourceError):  # the body has no timestamp column: still read from .2
        source_read(source=source)
    assert site.hits == ["127.0.0.2"]


def test_it_refuses_a_redirect_to_a_host_not_allowed(
    project: Project, sites: tuple[int, type[_Site]], settings: Any
) -> None:
    port, site = sites
    site.redirect_to = f"http://169.254.169.254:{port}/latest/meta-data.csv"
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    source = DataSource.objects.create(
        project=project, kind="url", url=f"http://127.0.0.2:{port}/events.csv"
    )
    with pytest.raises(SourceError, match="refused") as caught:
        source_read(source=source)
    assert not caught.value.retryable


def test_it_never_echoes_fetched_content_in_errors(
    project: Project, sites: tuple[int, type[_Site]], settings: Any
) -> None:
    port, site = sites
    site.body = b"aws_secret_access_key,token\nAKIA-SECRET-VALUE,xyz\n"
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    source = DataSource.objects.create(
        project=project, kind="url", url=f"http://127.0.0.2:{port}/events.csv"
    )
    with pytest.raises(SourceError) as caught:
        source_read(source=source)
    message = str(caught.value)
    assert "user_id" in message  # what is missing, in our own words
    assert "aws_secret" not in message and "AKIA" not in message
    source.refresh_from_db()
    assert "aws_secret" not in source.last_error and "AKIA" not in source.last_error


def test_it_stops_a_download_at_the_upload_limit(
    project: Project, sites: tuple[int, type[_Site]], settings: Any
) -> None:
    port, site = sites
    site.body = b"user_id,item_id\n" + b"1,2\n" * 400_000  # 1.6 MB
    settings.RECOTEM_MAX_UPLOAD_MB = 1
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    source = DataSource.objects.create(
        project=project, kind="url", url=f"http://127.0.0.2:{port}/events.csv"
    )
    with pytest.raises(SourceError, match="larger than 1 MB") as caught:
        source_read(source=source)
    assert not caught.value.retryable


def test_it_keeps_stored_files_private(project: Project, shop: Path) -> None:
    source = DataSource.objects.create(
        project=project, kind="sql", url=f"sqlite:///{shop}", query="SELECT * FROM events"
    )
    data = source_read(source=source)
    path = Path(data.file.path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert os.umask(0o077) == 0o077  # what every Recotem process runs with (settings)
