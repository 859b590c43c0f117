"""The attack suite: every break of issue 11, tried again against a real `recotem web` process.

One server (SQLite, like `make run`) is started for the module and attacked over HTTP the way
the breaks were found: rotating X-Forwarded-For, a gzip bomb, a 400 MB form, SQLite statements
that write, a rebinding resolver, varied cutoffs, huge ids, foreign ids, stolen tokens, a new
SECRET_KEY. Memory is measured on the server process itself (/proc: VmRSS, VmHWM reset before
each case). Clients connect from different loopback addresses (127.0.0.x) where a test needs
a client address of its own, so one case's lock does not lock the next case out.

The unit tests next to each control (docs/security.md lists them) cover the finer cases.
"""

from __future__ import annotations

import gzip
import http.server
import json
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from recotem.testing.processes import (
    free_port,
    peak_rss_mb,
    process_env,
    recotem,
    reset_peak_rss,
    rss_mb,
    start,
    stop,
    wait_http_ok,
)

pytestmark = pytest.mark.integration

KEY_A = "attack-suite-key-A-" + "a" * 40
KEY_B = "attack-suite-key-B-" + "b" * 40
ADMIN_PASSWORD = "admin-pass-123"
METRICS_TOKEN = "metrics-token-for-the-attack-suite"
CACHE_MB = 8
HUGE_IDS = ("9223372036854775808", "99999999999999999999999999", "-1", "1e3", "0x10")
VICTIMS = ("victim_api", "victim_ui", "victim_admin")

# The resolver stub: a `sitecustomize` on the server's PYTHONPATH (test-only, nothing in the
# product reads it). It answers one name from a cycle of addresses and logs each answer, so a
# client that resolves once to check and again to connect is sent to loopback the second time.
_REBIND_STUB = """
import itertools, os, socket

_spec = os.environ.get("ATTACK_REBIND", "")
if _spec:
    _name, _, _ips = _spec.partition("=")
    _answers = itertools.cycle(_ips.split(","))
    _real = socket.getaddrinfo

    def _getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name != _name:
            return _real(host, port, *args, **kwargs)
        ip = next(_answers)
        with open(os.environ["ATTACK_REBIND_LOG"], "a") as log:
            log.write(ip + "\\n")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port or 0)))]

    socket.getaddrinfo = _getaddrinfo
"""

_SETUP = """
import json
from pathlib import Path
from django.contrib.auth.models import User
from recotem.inference.testing import build_world

names = ("alice", "bob", "carol", "dave") + {victims!r}
for name in names:
    User.objects.create_user(name, password=name + "-password-1", is_staff=(name == "victim_admin"))
alice = build_world(csv=Path({ml!r}), models=[("IALS", {{"n_components": 16}}), ("TopPop", {{}})],
                    weights=[100], username="alice")
bob = build_world(csv=Path({small!r}), models=[("TopPop", {{}})], weights=[100], username="bob")
print("WORLD=" + json.dumps({{"alice": alice, "bob": bob}}))
"""


class Server:
    """A `recotem web` process on a private data dir; restartable with other settings."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root / "web.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start(recotem("web", "--port", str(self.port)), self.env, self.log)
        wait_http_ok(f"{self.base}/api/v1/ping/", timeout=120, proc=self.proc, any_status=True)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def restart(self, **env: str) -> None:
        self.stop()
        self.env = {**self.env, **env}
        for name in [k for k, v in env.items() if v == ""]:
            self.env.pop(name)
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, source: str = "127.0.0.1", **kwargs: Any) -> httpx.Client:
        """An HTTP client whose connections come from `source` (a loopback address)."""
        return httpx.Client(
            base_url=self.base,
            transport=httpx.HTTPTransport(local_address=source),
            timeout=120,
            **kwargs,
        )

    def manage(self, code: str) -> str:
        done = subprocess.run(
            recotem("manage", "shell", "-c", code),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, ml100k_csv: Path
) -> Iterator[tuple[Server, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("attack")
    shop = root / "shop"
    shop.mkdir()
    with sqlite3.connect(shop / "events.db") as conn:
        conn.execute("CREATE TABLE events (user_id, item_id, timestamp)")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(u, i, 1_600_000_000 + u + i) for u in range(1, 31) for i in range(1, 11)],
        )
    conn.close()
    small = root / "small.csv"
    small.write_text(
        "user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(1, 21) for i in range(1, 9))
    )
    stub = root / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(_REBIND_STUB)
    env = process_env(
        root / "data",
        SECRET_KEY=KEY_A,
        RECOTEM_ADMIN_PASSWORD=ADMIN_PASSWORD,
        RECOTEM_ALLOWED_SOURCE_HOSTS=f"sqlite:{shop},127.0.0.2",
        RECOTEM_INFERENCE_CACHE_MB=str(CACHE_MB),
        RECOTEM_METRICS_TOKEN=METRICS_TOKEN,
        RECOTEM_LOG_LEVEL="WARNING",
        PYTHONPATH=str(stub),
        ATTACK_REBIND="shop.example=127.0.0.2,127.0.0.1",
        ATTACK_REBIND_LOG=str(root / "rebind.log"),
    )
    srv = Server(root, env)
    done = subprocess.run(recotem("migrate"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = srv.manage(_SETUP.format(victims=VICTIMS, ml=str(ml100k_csv), small=str(small)))
    world = json.loads(out.split("WORLD=")[1].strip().splitlines()[0])
    world["shop"] = shop
    srv.start()
    try:
        yield srv, world
    finally:
        srv.stop()


def _jwt(srv: Server, user: str, source: str = "127.0.0.1") -> dict[str, str]:
    with srv.client(source) as c:
        r = c.post("/api/v1/auth/login/", json={"username": user, "password": f"{user}-password-1"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def _session(srv: Server, user: str, password: str, source: str, path: str) -> httpx.Client:
    """A client signed in through the HTML form at `path` (/login/ or /admin/login/)."""
    c = srv.client(source)
    c.get(path)
    r = c.post(
        path,
        data={
            "username": user,
            "password": password,
            "csrfmiddlewaretoken": c.cookies["csrftoken"],
            "next": "/admin/" if path.startswith("/admin") else "/",
        },
    )
    assert r.status_code == 302, (r.status_code, r.text[:500])
    return c


def _form_login(c: httpx.Client, path: str, user: str, password: str, forwarded: str) -> int:
    if "csrftoken" not in c.cookies:
        c.get(path)
    r = c.post(
        path,
        data={
            "username": user,
            "password": password,
            "csrfmiddlewaretoken": c.cookies["csrftoken"],
        },
        headers={"X-Forwarded-For": forwarded},
    )
    if r.status_code == 429:
        assert "Too many failed sign-in attempts" in r.text
        assert "no-store" in r.headers["cache-control"]
    return r.status_code


def _assert_locked_at_the_limit(statuses: list[int], refusal: int) -> None:
    """Wrong passwords get the door's ordinary refusal until the 10th (the limit): 429."""
    assert statuses == [refusal] * 9 + [429], statuses


# --- 1. password guessing ------------------------------------------------------------------


def test_api_brute_force_with_rotating_forwarded_for_gets_429_before_the_right_password(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, _ = server
    with srv.client("127.0.0.11") as c:
        statuses = [
            c.post(
                "/api/v1/auth/login/",
                json={"username": "victim_api", "password": f"guess-{n}"},
                headers={"X-Forwarded-For": f"203.0.113.{n}"},
            ).status_code
            for n in range(10)
        ]
        _assert_locked_at_the_limit(statuses, 401)
        right = c.post(
            "/api/v1/auth/login/",
            json={"username": "victim_api", "password": "victim_api-password-1"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert right.status_code == 429
        assert right.json()["retry_after_seconds"] == 15 * 60
        # Locked per address too: another user's right password from the same client.
        other = c.post(
            "/api/v1/auth/login/", json={"username": "carol", "password": "carol-password-1"}
        )
        assert other.status_code == 429
    right = {"username": "victim_api", "password": "victim_api-password-1"}
    # ... and per username: the right password from a fresh address is refused as well.
    with srv.client("127.0.0.12") as c:
        assert c.post("/api/v1/auth/login/", json=right).status_code == 429

    # An administrator sees the lock in the admin and clears it; the victim can sign in again.
    with closing(_session(srv, "admin", ADMIN_PASSWORD, "127.0.0.18", "/admin/login/")) as admin:
        listing = admin.get("/admin/axes/accessattempt/", params={"q": "victim_api"})
        assert listing.status_code == 200
        assert "victim_api" in listing.text and "127.0.0.11" in listing.text
        ids = re.findall(r'name="_selected_action" value="(\d+)"', listing.text)
        assert ids
        form = {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
        form["csrfmiddlewaretoken"] = admin.cookies["csrftoken"]
        cleared = admin.post("/admin/axes/accessattempt/", data=form)
        assert cleared.status_code == 302, cleared.text[:500]
    with srv.client("127.0.0.11") as c:
        assert c.post("/api/v1/auth/login/", json=right).status_code == 200


@pytest.mark.parametrize(
    ("path", "user", "source"),
    [("/login/", "victim_ui", "127.0.0.13"), ("/admin/login/", "victim_admin", "127.0.0.14")],
)
def test_form_brute_force_with_rotating_forwarded_for_gets_the_lock_page(
    server: tuple[Server, dict[str, Any]], path: str, user: str, source: str
) -> None:
    srv, _ = server
    with srv.client(source) as c:
        statuses = [_form_login(c, path, user, f"guess-{n}", f"203.0.113.{n}") for n in range(10)]
        _assert_locked_at_the_limit(statuses, 200)  # 200: the form again, with its error
        assert _form_login(c, path, user, f"{user}-password-1", "198.51.100.8") == 429
    with srv.client("127.0.0.15" if path == "/login/" else "127.0.0.16") as c:
        assert _form_login(c, path, user, f"{user}-password-1", "198.51.100.9") == 429


def test_a_web_session_is_not_an_api_credential(server: tuple[Server, dict[str, Any]]) -> None:
    srv, _ = server
    with closing(_session(srv, "dave", "dave-password-1", "127.0.0.1", "/login/")) as ui:
        assert ui.get("/").status_code == 200
        assert ui.get("/api/v1/project/").status_code == 401


# --- 2. memory exhaustion from small inputs ------------------------------------------------


def _raw_request(port: int, head: str, body_chunks: Iterator[bytes] | None) -> tuple[str, int]:
    """Send `head` then the chunks until the server stops reading; (status line, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks or iter(()):
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096).decode(errors="replace")
        except ConnectionResetError:
            answer = ""
    return answer.split("\r\n", 1)[0], sent


def test_a_400_mb_form_post_to_login_is_refused_with_flat_memory(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, _ = server
    before = rss_mb(srv.pid)
    reset_peak_rss(srv.pid)
    size = 400 * 2**20
    form_head = (
        f"POST /login/ HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
    )
    # Declared: refused from the headers, before one byte of the body is read.
    status, _ = _raw_request(srv.port, form_head + f"Content-Length: {size}\r\n\r\n", None)
    assert status == "HTTP/1.1 413 Request Entity Too Large"

    # Streamed without a length: cut off at the 2.5 MB limit while the attacker keeps sending.
    def chunks() -> Iterator[bytes]:
        piece = b"a=" + b"x" * (2**20 - 2)
        for _ in range(size // 2**20):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        yield b"0\r\n\r\n"

    status, sent = _raw_request(
        srv.port, form_head + "Transfer-Encoding: chunked\r\n\r\n", chunks()
    )
    assert status in ("HTTP/1.1 413 Request Entity Too Large", ""), status
    assert sent < 64 * 2**20, f"the server read {sent / 2**20:.0f} MB of a refused body"
    growth = peak_rss_mb(srv.pid) - before
    print(
        f"\n400 MB form: sent {sent / 2**20:.1f} MB before cut-off, peak RSS growth {growth:.1f} MB"
    )
    assert growth < 100
    assert srv.client().get("/api/v1/ping/").status_code == 200  # and the server is fine


def _gzip_bomb(path: Path, rows: int) -> Path:
    line = b"1,2\n"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"user_id,item_id\n")
        block = line * 100_000
        for _ in range(rows // 100_000):
            fh.write(block)
    return path


def test_a_gzip_bomb_upload_is_refused_with_flat_memory(
    server: tuple[Server, dict[str, Any]], tmp_path: Path
) -> None:
    srv, world = server
    bomb = _gzip_bomb(tmp_path / "events.csv.gz", 17_000_000)  # 65 MB of CSV in ~70 KB
    headers = _jwt(srv, "alice")
    with srv.client(headers=headers) as c:
        count = c.get("/api/v1/training_data/").json()["count"]
        before = rss_mb(srv.pid)
        reset_peak_rss(srv.pid)
        r = c.post(
            "/api/v1/training_data/",
            data={"project": str(world["alice"]["project_id"])},
            files={"file": ("events.csv.gz", bomb.read_bytes(), "application/gzip")},
        )
        growth = peak_rss_mb(srv.pid) - before
        assert r.status_code == 413, r.text
        assert "RECOTEM_MAX_" in r.text  # names the limit it hit
        assert c.get("/api/v1/training_data/").json()["count"] == count  # nothing stored
    print(f"\ngzip bomb ({bomb.stat().st_size / 1024:.0f} KB): peak RSS growth {growth:.1f} MB")
    assert growth < 100


def test_varied_cutoffs_keep_the_answer_cache_within_its_byte_limit(
    server: tuple[Server, dict[str, Any]],
) -> None:
    """The issue's 245 batch requests over (user, cutoff) grew a process by 500 MB. Here every
    user of ml-100k is asked for every cutoff the precomputed top-50 covers (the answers
    worth caching) and for larger ones up to 1000, on two models, in two rounds of new keys
    (odd cutoffs, then even ones). The first round fills the cache to its limit and brings
    the allocator to its working size; the second may grow the process by less than the
    cache's limit. With a 1024 MB limit (in effect none) the second round grew the same
    process by 284 MB (111 MB of answers); with 8 MB, by 3 MB."""
    srv, world = server
    key = {"X-API-Key": world["alice"]["key"]}
    users = [str(u) for u in range(1, 944)]
    operator = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    requests = 0
    with srv.client(headers=key) as c:

        def round_of(cutoffs: range) -> None:
            nonlocal requests
            for model in world["alice"]["model_ids"]:
                for cutoff in [*cutoffs, *range(cutoffs.start + 60, 1001, 120)]:
                    ids = users[: 100_000 // cutoff]  # users x cutoff within the batch cap
                    r = c.post(
                        f"/inference/predict/{model}/batch",
                        json={"user_ids": ids, "cutoff": cutoff},
                    )
                    assert r.status_code == 200, r.text
                    assert r.headers["x-content-type-options"] == "nosniff"
                    requests += 1

        started = time.monotonic()
        first = rss_mb(srv.pid)
        round_of(range(1, 51, 2))
        filled = rss_mb(srv.pid)
        round_of(range(2, 51, 2))
        growth = rss_mb(srv.pid) - filled
    with srv.client(headers=operator) as c:
        cache = c.get("/inference/health").json()["answer_cache"]
    print(
        f"\n{requests} batch requests in {time.monotonic() - started:.1f} s: RSS {first:.0f} MB"
        f" -> {filled:.0f} MB after round 1 -> +{growth:.1f} MB in round 2; cache "
        f"{cache['bytes'] / 2**20:.1f} MB of {CACHE_MB} MB, {cache['evictions']} evictions"
    )
    assert cache["max_bytes"] == CACHE_MB * 2**20
    assert 0 < cache["bytes"] <= cache["max_bytes"]
    assert cache["evictions"] > 0  # the traffic would have held more than the limit
    assert growth < CACHE_MB


# --- 3. data sources that cannot write or escape ---------------------------------------------


def _new_project(c: httpx.Client, name: str) -> int:
    r = c.post(
        "/api/v1/project/",
        json={"name": name, "user_column": "user_id", "item_column": "item_id"},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sqlite_statements_that_write_change_nothing_on_disk(
    server: tuple[Server, dict[str, Any]], tmp_path: Path
) -> None:
    srv, world = server
    shop: Path = world["shop"]
    db = shop / "events.db"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with srv.client(headers=_jwt(srv, "alice")) as c:
        project = _new_project(c, "sqlite-attack")
        created = c.post(
            "/api/v1/data_source/",
            json={"project": project, "kind": "sql", "url": f"sqlite:///{db}", "query": "SELECT 1"},
        )
        assert created.status_code == 201, created.text
        source = created.json()["id"]
        before = _files(shop)
        for query in (
            f"VACUUM INTO '{outside / 'copy.db'}'",
            f"ATTACH DATABASE '{outside / 'new.db'}' AS other",
            f"ATTACH DATABASE '{shop / 'beside.db'}' AS other",
            "CREATE TABLE evil (x)",
            "DROP TABLE events",
            "DELETE FROM events",
            "UPDATE events SET item_id = 0",
            "SELECT * FROM events; DROP TABLE events",
            "PRAGMA journal_mode=DELETE",
        ):
            patched = c.patch(f"/api/v1/data_source/{source}/", json={"query": query})
            assert patched.status_code in (200, 400), patched.text
            if patched.status_code == 200:
                read = c.post(f"/api/v1/data_source/{source}/test/")
                assert read.status_code == 400, (query, read.text)
            assert _files(shop) == before, query
            assert list(outside.iterdir()) == [], query
        # The same source still reads what a SELECT returns: the refusals were the statements.
        c.patch(f"/api/v1/data_source/{source}/", json={"query": "SELECT * FROM events"})
        read = c.post(f"/api/v1/data_source/{source}/test/")
        assert read.status_code == 200, read.text
        assert read.json()["row_count"] == 300
        assert _files(shop) == before


class _Site(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.server.server_address[0])  # type: ignore[index]
        body = b"user_id,item_id\n1,2\n2,3\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sites() -> Iterator[tuple[int, type[_Site]]]:
    """One port on 127.0.0.2 (the allowed host) and on 127.0.0.1 (what rebinding aims at)."""

    class Site(_Site):
        hits: list[str] = []

    servers: list[http.server.ThreadingHTTPServer] = []
    for _ in range(20):
        port = free_port()
        try:
            servers = [
                http.server.ThreadingHTTPServer((address, port), Site)
                for address in ("127.0.0.2", "127.0.0.1")
            ]
            break
        except OSError:
            for s in servers:
                s.server_close()
            servers = []
    assert servers, "no port free on both 127.0.0.1 and 127.0.0.2"
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield port, Site
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_rebinding_resolver_cannot_send_a_source_to_loopback(
    server: tuple[Server, dict[str, Any]], sites: tuple[int, type[_Site]]
) -> None:
    srv, _ = server
    port, site = sites
    log = Path(srv.env["ATTACK_REBIND_LOG"])
    with srv.client(headers=_jwt(srv, "alice")) as c:
        project = _new_project(c, "rebinding-attack")
        # shop.example answers 127.0.0.2 (allowed), then 127.0.0.1, then 127.0.0.2, ...
        created = c.post(
            "/api/v1/data_source/",
            json={"project": project, "kind": "url", "url": f"http://shop.example:{port}/e.csv"},
        )
        assert created.status_code == 201, created.text
        answers = []
        for _ in range(4):
            r = c.post(f"/api/v1/data_source/{created.json()['id']}/test/")
            assert r.status_code in (200, 400), r.text
            answers.append(r.json())
    resolved = log.read_text().split()
    assert "127.0.0.1" in resolved  # the stub did send some look-ups to loopback
    assert "127.0.0.1" not in site.hits, (site.hits, resolved, answers)
    assert any("loopback" in json.dumps(a) for a in answers)


# --- 4. disclosure, ids, foreign objects -------------------------------------------------------


def test_huge_and_malformed_ids_are_404_or_400_never_500(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, world = server
    key = {"X-API-Key": world["alice"]["key"]}
    with srv.client(headers=_jwt(srv, "alice")) as c:
        for bad in HUGE_IDS:
            for path in (
                f"/api/v1/project/{bad}/",
                f"/api/v1/training_data/{bad}/preview/",
                f"/api/v1/trained_model/{bad}/",
            ):
                r = c.get(path)
                assert r.status_code == 404, (path, r.status_code, r.text[:200])
            r = c.get("/api/v1/training_data/", params={"project": bad})
            assert r.status_code == 400, (bad, r.text[:200])
            r = c.post(f"/inference/predict/{bad}", json={"user_id": "1"}, headers=key)
            assert r.status_code == 404, (bad, r.text)
            r = c.post(f"/inference/predict/project/{bad}", json={"user_id": "1"}, headers=key)
            assert r.status_code == 404, (bad, r.text)
        model = world["alice"]["model_ids"][0]
        for body in (
            {"user_id": "1", "cutoff": 2**70},
            {"user_id": "1", "cutoff": -5},
            {"user_id": 10**400},
            {"user_ids": ["1"] * 20_000, "cutoff": 10},
        ):
            path = f"/inference/predict/{model}" + ("/batch" if "user_ids" in body else "")
            r = c.post(
                path, content=json.dumps(body), headers={**key, "Content-Type": "application/json"}
            )
            assert r.status_code in (400, 404, 413, 422), (
                body if len(str(body)) < 80 else "big",
                r.text,
            )
        r = c.get(f"/projects/{HUGE_IDS[0]}/")
        assert r.status_code in (302, 404)


def test_foreign_and_missing_objects_get_the_same_answers(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, world = server
    foreign_project = world["bob"]["project_id"]
    missing_project = 10**9
    foreign_model = world["bob"]["model_ids"][0]
    key = {"X-API-Key": world["alice"]["key"]}

    def same(a: httpx.Response, b: httpx.Response, *ids: int) -> None:
        texts = [a.text, b.text]
        for n in ids:
            texts = [t.replace(str(n), "<id>") for t in texts]
        assert (a.status_code, texts[0]) == (b.status_code, texts[1])

    with srv.client(headers=_jwt(srv, "alice")) as c:
        for listing in ("training_data", "trained_model", "api_keys", "task_log"):
            f = c.get(f"/api/v1/{listing}/", params={"project": foreign_project})
            m = c.get(f"/api/v1/{listing}/", params={"project": missing_project})
            assert f.status_code in (200, 400)
            if listing != "task_log":  # task_log filters by an integer: both simply match nothing
                assert f.status_code == 400, (listing, f.text)
            same(f, m, foreign_project, missing_project)
        f = c.get(f"/api/v1/project/{foreign_project}/")
        m = c.get(f"/api/v1/project/{missing_project}/")
        assert f.status_code == 404
        same(f, m)
        f = c.post(
            "/api/v1/data_source/",
            json={"project": foreign_project, "kind": "url", "url": "http://127.0.0.2/a.csv"},
        )
        m = c.post(
            "/api/v1/data_source/",
            json={"project": missing_project, "kind": "url", "url": "http://127.0.0.2/a.csv"},
        )
        assert f.status_code == 400
        same(f, m, foreign_project, missing_project)
        f = c.post(f"/inference/predict/{foreign_model}", json={"user_id": "1"}, headers=key)
        m = c.post(f"/inference/predict/{10**9}", json={"user_id": "1"}, headers=key)
        assert f.status_code == 404
        same(f, m)
        f = c.post(
            f"/inference/predict/project/{foreign_project}", json={"user_id": "1"}, headers=key
        )
        m = c.post(
            f"/inference/predict/project/{missing_project}", json={"user_id": "1"}, headers=key
        )
        assert f.status_code == 404
        same(f, m)


def test_health_metrics_and_raw_keys_disclose_nothing(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, world = server
    with srv.client() as anonymous:
        health = anonymous.get("/inference/health")
        assert set(health.json()) == {"status"}
        assert anonymous.get("/inference/metrics").status_code == 401
        metrics = anonymous.get(
            "/inference/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert metrics.status_code == 200
        assert metrics.headers["x-content-type-options"] == "nosniff"
    with srv.client(headers=_jwt(srv, "alice")) as c:
        r = c.post(
            "/api/v1/api_keys/",
            json={"project": world["alice"]["project_id"], "name": "k", "scopes": ["read"]},
        )
        assert r.status_code == 201 and r.json()["key"]
        assert "no-store" in r.headers["cache-control"]
    with closing(_session(srv, "alice", "alice-password-1", "127.0.0.1", "/login/")) as ui:
        page = ui.get(f"/projects/{world['alice']['project_id']}/keys/")
        form = {"name": "ui-key", "scopes": "read", "csrfmiddlewaretoken": ui.cookies["csrftoken"]}
        shown = ui.post(f"/projects/{world['alice']['project_id']}/keys/", data=form)
        assert page.status_code == 200 and shown.status_code == 200, shown.text[:300]
        assert re.search(r"rctm_[A-Za-z0-9_-]{20,}", shown.text)  # the raw key, shown once
        assert "no-store" in shown.headers["cache-control"]


# --- 5. tokens and keys ------------------------------------------------------------------------


def test_refresh_rotation_logout_and_any_password_change_revoke_tokens(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, _ = server
    with srv.client() as c:

        def login(password: str) -> dict[str, str]:
            r = c.post("/api/v1/auth/login/", json={"username": "carol", "password": password})
            assert r.status_code == 200, r.text
            return r.json()

        def works(access: str) -> bool:
            return (
                c.get(
                    "/api/v1/auth/user/", headers={"Authorization": f"Bearer {access}"}
                ).status_code
                == 200
            )

        def refresh(token: str) -> httpx.Response:
            return c.post("/api/v1/auth/token/refresh/", json={"refresh": token})

        first = login("carol-password-1")
        rotated = refresh(first["refresh"])
        assert rotated.status_code == 200 and rotated.json()["refresh"] != first["refresh"]
        assert refresh(first["refresh"]).status_code == 401  # a used refresh token is dead
        assert (
            c.post("/api/v1/auth/logout/", json={"refresh": rotated.json()["refresh"]}).status_code
            == 204
        )
        assert refresh(rotated.json()["refresh"]).status_code == 401

        # Password changed through the API: older access and refresh tokens stop at once.
        second = login("carol-password-1")
        changed = c.post(
            "/api/v1/auth/password/",
            json={"old_password": "carol-password-1", "new_password": "carol-password-2"},
            headers={"Authorization": f"Bearer {second['access']}"},
        )
        assert changed.status_code == 200, changed.text
        assert not works(second["access"]) and refresh(second["refresh"]).status_code == 401
        assert works(changed.json()["access"])

        # ... and by any other path: saving the user from a shell.
        third = login("carol-password-2")
        srv.manage(
            "from django.contrib.auth.models import User; u = User.objects.get(username='carol');"
            " u.set_password('carol-password-3'); u.save()"
        )
        assert not works(third["access"]) and refresh(third["refresh"]).status_code == 401
        assert not works(changed.json()["access"])


def test_a_new_secret_key_with_fallbacks_keeps_sessions_keys_and_models_valid(
    server: tuple[Server, dict[str, Any]],
) -> None:
    srv, world = server
    key = {"X-API-Key": world["alice"]["key"]}
    model = world["alice"]["model_ids"][1]
    ui = _session(srv, "alice", "alice-password-1", "127.0.0.1", "/login/")
    try:
        srv.restart(SECRET_KEY=KEY_B, RECOTEM_SECRET_KEY_FALLBACKS=KEY_A)
        assert ui.get("/", follow_redirects=False).status_code == 200  # still signed in
        served = srv.client().post(
            f"/inference/predict/{model}", json={"user_id": "1"}, headers=key
        )
        assert served.status_code == 200, served.text
        # Re-sign the artifacts, drop the old key: models and (rehashed) API keys still work.
        out = subprocess.run(
            recotem("manage", "resign_models"),
            env=srv.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        srv.restart(RECOTEM_SECRET_KEY_FALLBACKS="")
        served = srv.client().post(
            f"/inference/predict/{model}", json={"user_id": "1"}, headers=key
        )
        assert served.status_code == 200, served.text
        # The session's auth hash was re-made under the new key on its first request while
        # the fallback was set (Django does that), so dropping the old key keeps it valid.
        assert ui.get("/", follow_redirects=False).status_code == 200
    finally:
        ui.close()


# --- 6. an OpenAPI fuzzer over the whole API (last: its login guesses lock 127.0.0.1) ----------

SCHEMATHESIS_SEED = 11
SCHEMATHESIS_EXAMPLES = 5  # per operation: about a minute for the whole API on 2 busy cores


def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    server: tuple[Server, dict[str, Any]], tmp_path: Path
) -> None:
    """Schemathesis (fixed seed, bounded examples) over /api/v1/schema/ of the real server,
    signed in as a user with a project, trained model and slot of its own; any 5xx or any
    response that does not match the schema fails the run."""
    import shutil
    import sys

    srv, _ = server
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is in the test extra"
    headers = _jwt(srv, "alice")
    began = time.monotonic()
    done = subprocess.run(
        [
            st,
            "run",
            f"{srv.base}/api/v1/schema/",
            "--header",
            f"Authorization: {headers['Authorization']}",
            "--seed",
            str(SCHEMATHESIS_SEED),
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--phases",
            "examples,fuzzing",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    seconds = time.monotonic() - began
    summary = done.stdout[done.stdout.find("Test cases:") :][:200]
    print(f"\nschemathesis: {seconds:.0f} s, {summary.strip()}")
    assert done.returncode == 0, done.stdout[-6000:]
