"""safehttp against real HTTP(S) servers on 127.0.0.x, with a stubbed DNS (socket.getaddrinfo)."""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme

from recotem.lib.netguard import check_url_allowed
from recotem.lib.safehttp import (
    FetchError,
    FetchHttpStatus,
    FetchRefused,
    FetchTimeout,
    FetchTooLarge,
    RetryPolicy,
    Timeouts,
    download_to_file,
    post_json,
    post_json_with_retries,
)

MARKER = "BODY-MARKER-3f9c1e"
CSV = b"user,item\nu1,i1\nu2,i2\n"
FAST = Timeouts(connect=1.0, read=2.0, total=5.0)


@dataclass
class Seen:
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    sent_bytes: int = 0
    statuses: list[int] = field(default_factory=list)  # POST answers, in order
    retry_after: str | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self, body: bytes = b"") -> None:
        self.server.seen.requests.append(
            (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._record(body)
        seen = self.server.seen
        status = seen.statuses.pop(0) if seen.statuses else 204
        self.send_response(status)
        if status in (301, 302, 307, 308):
            self.send_header("Location", self.server.redirect_to)
        if seen.retry_after is not None:
            self.send_header("Retry-After", seen.retry_after)
        text = f"error page {MARKER}".encode()
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def do_GET(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        if path == "/data.csv":
            self._send(200, CSV)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), f"<h1>{MARKER}</h1>".encode())
        elif path == "/big":  # endless body, no Content-Length
            self.send_response(200)
            self.end_headers()
            chunk = (MARKER + "\n").encode() * 4096
            try:
                for _ in range(100_000):
                    self.wfile.write(chunk)
                    self.server.seen.sent_bytes += len(chunk)
            except OSError:
                return
        elif path == "/encoded":
            import gzip

            body = gzip.compress(b"u,i\n" * 1_000_000)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
            try:
                self.wfile.write(b"x" * 1000)
            except OSError:
                return
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                return
        else:
            self._send(404, MARKER.encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.seen = Seen()
        self.redirect_to = ""
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture()
def servers() -> Iterator[dict[str, _Server]]:
    """'victim' on 127.0.0.1 (what rebinding aims at) and 'checked' on 127.0.0.2."""
    started = {"victim": _Server("127.0.0.1"), "checked": _Server("127.0.0.2")}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in started.values()]
    for t in threads:
        t.start()
    yield started
    for s in started.values():
        s.shutdown()
        s.server_close()


class FakeDns:
    """Answers listed names from a script of answers (the last one repeats); counts look-ups."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[str]] = {}
        self.calls: dict[str, int] = {}
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name not in self.answers:
                if name.endswith(".example"):
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                return real(host, port, *args, **kwargs)
            self.calls[name] = self.calls.get(name, 0) + 1
            script = self.answers[name]
            ip = script.pop(0) if len(script) > 1 else script[0]
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port or 0)))]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture()
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(monkeypatch)


def test_it_connects_to_the_checked_address_when_dns_rebinds(
    servers: dict[str, _Server], dns: FakeDns, tmp_path: Path
) -> None:
    port = servers["checked"].port
    url = f"http://rebind.example:{port}/data.csv"
    # The victim listens on the same port number on 127.0.0.1, as a local service would.
    try:
        victim = _Server("127.0.0.1", port=port)
    except OSError:
        pytest.skip("port taken on 127.0.0.1")
    threading.Thread(target=victim.serve_forever, daemon=True).start()
    try:
        # First the naive way, to prove the attack: check, then let httpx resolve again.
        dns.answers["rebind.example"] = ["127.0.0.2", "127.0.0.1"]
        check_url_allowed(url, allowed_hosts=["127.0.0.2"])
        assert httpx.get(url, trust_env=False).content == CSV
        assert len(victim.seen.requests) == 1  # the second look-up sent it to 127.0.0.1

        victim.seen.requests.clear()
        dns.answers["rebind.example"] = ["127.0.0.2", "127.0.0.1"]
        dns.calls.clear()
        got = download_to_file(
            url, tmp_path / "d.csv", allowed_hosts=["127.0.0.2"], max_bytes=1000, timeouts=FAST
        )
        assert (tmp_path / "d.csv").read_bytes() == CSV and got.size == len(CSV)
        assert dns.calls == {"rebind.example": 1}  # resolved once
        assert victim.seen.requests == []  # the victim saw nothing
        method, path, headers, _ = servers["checked"].seen.requests[-1]
        assert (method, path) == ("GET", "/data.csv")
        assert headers["host"] == f"rebind.example:{port}"  # original Host header kept
    finally:
        victim.shutdown()
        victim.server_close()


def test_it_never_reaches_loopback_when_a_public_name_rebinds(
    servers: dict[str, _Server], dns: FakeDns, tmp_path: Path
) -> None:
    port = servers["victim"].port
    dns.answers["public.example"] = ["93.184.215.14", "127.0.0.1"]
    with pytest.raises(FetchError) as info:
        download_to_file(
            f"http://public.example:{port}/data.csv",
            tmp_path / "d.csv",
            allowed_hosts=["*"],
            max_bytes=1000,
            timeouts=Timeouts(connect=0.5, read=1, total=3),
        )
    assert "public.example" in str(info.value)
    assert servers["victim"].seen.requests == []
    assert not (tmp_path / "d.csv").exists()


def test_it_fetches_from_an_allowed_local_host(
    servers: dict[str, _Server], dns: FakeDns, tmp_path: Path
) -> None:
    port = servers["victim"].port
    dns.answers["files.example"] = ["127.0.0.1"]
    got = download_to_file(
        f"http://files.example:{port}/data.csv",
        tmp_path / "d.csv",
        allowed_hosts=["files.example"],
        max_bytes=1000,
        timeouts=FAST,
    )
    assert got.path.read_bytes() == CSV
    headers = servers["victim"].seen.requests[-1][2]
    assert headers["host"] == f"files.example:{port}"
    assert headers["accept-encoding"] == "identity"
    # The same host without permission is refused before any connection.
    with pytest.raises(FetchRefused, match="loopback"):
        download_to_file(
            f"http://files.example:{port}/data.csv",
            tmp_path / "e",
            allowed_hosts=["*"],
            max_bytes=9,
        )
    assert len(servers["victim"].seen.requests) == 1


def test_it_rechecks_every_redirect_and_bounds_them(
    servers: dict[str, _Server], tmp_path: Path
) -> None:
    start, victim = servers["checked"], servers["victim"]
    base = f"http://127.0.0.2:{start.port}"
    for target in (
        f"http://127.0.0.1:{victim.port}/data.csv",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ):
        with pytest.raises(FetchRefused):
            download_to_file(
                f"{base}/redirect?to={target}",
                tmp_path / "d",
                allowed_hosts=["127.0.0.2"],
                max_bytes=1000,
                timeouts=FAST,
            )
    assert victim.seen.requests == []
    # Allowed hops are followed, relative ones too, and a loop stops.
    got = download_to_file(
        f"{base}/redirect?to=/data.csv", tmp_path / "d", allowed_hosts=["127.0.0.2"], max_bytes=99
    )
    assert got.final_url == f"{base}/data.csv" and got.path.read_bytes() == CSV
    with pytest.raises(FetchError, match="More than 3 redirects"):
        download_to_file(
            f"{base}/loop",
            tmp_path / "d",
            allowed_hosts=["127.0.0.2"],
            max_bytes=9,
            max_redirects=3,
        )
    assert len([r for r in start.seen.requests if r[1] == "/loop"]) == 4


def test_it_stops_a_body_larger_than_the_cap_early(
    servers: dict[str, _Server], tmp_path: Path
) -> None:
    server = servers["checked"]
    cap = 1_000_000
    started = time.monotonic()
    with pytest.raises(FetchTooLarge) as info:
        download_to_file(
            f"http://127.0.0.2:{server.port}/big",
            tmp_path / "d",
            allowed_hosts=["127.0.0.2"],
            max_bytes=cap,
            timeouts=FAST,
        )
    assert time.monotonic() - started < 3
    assert "download limit" in str(info.value)
    assert not (tmp_path / "d").exists()
    time.sleep(0.3)
    # The server could send 8 GB; it got to send the cap plus what the socket buffers held.
    assert server.seen.sent_bytes < cap + 8_000_000
    # 4 MB inflating from 12 KB: refused rather than decoded.
    with pytest.raises(FetchError, match="compressed the response"):
        download_to_file(
            f"http://127.0.0.2:{server.port}/encoded",
            tmp_path / "d",
            allowed_hosts=["127.0.0.2"],
            max_bytes=cap,
        )
    with pytest.raises(FetchTooLarge):
        download_to_file(
            f"http://127.0.0.2:{server.port}/declared",
            tmp_path / "d",
            allowed_hosts=["127.0.0.2"],
            max_bytes=cap,
        )


def test_it_gives_up_at_the_total_deadline(servers: dict[str, _Server], tmp_path: Path) -> None:
    server = servers["checked"]
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        download_to_file(
            f"http://127.0.0.2:{server.port}/drip",
            tmp_path / "d",
            allowed_hosts=["127.0.0.2"],
            max_bytes=10_000,
            timeouts=Timeouts(connect=1, read=1, total=1),
        )
    assert time.monotonic() - started < 2.5


def _garbage_server() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()

    def answer() -> None:
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 200 OK\r\nBroken header {MARKER}\r\n\r\n".encode())

    threading.Thread(target=answer, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def test_it_never_puts_fetched_content_in_error_messages(
    servers: dict[str, _Server], tmp_path: Path
) -> None:
    server = servers["checked"]
    messages = []
    for path in ("/status/500", "/status/404", "/nowhere"):
        with pytest.raises(FetchHttpStatus) as info:
            download_to_file(
                f"http://127.0.0.2:{server.port}{path}",
                tmp_path / "d",
                allowed_hosts=["127.0.0.2"],
                max_bytes=1000,
            )
        messages.append(str(info.value))
        assert info.value.retryable is (path == "/status/500")
    listener, port = _garbage_server()
    try:
        with pytest.raises(FetchError) as garbage:
            download_to_file(
                f"http://127.0.0.2:{port}/x.csv",
                tmp_path / "d",
                allowed_hosts=["127.0.0.2"],
                max_bytes=9,
            )
        messages.append(str(garbage.value))
        with pytest.raises(FetchError) as garbage_post:
            post_json(
                f"http://127.0.0.2:{port}/hook", b"{}", headers={}, allowed_hosts=["127.0.0.2"]
            )
        messages.append(str(garbage_post.value))
    finally:
        listener.close()
    assert messages[0] == "The server at 127.0.0.2 answered HTTP 500."
    assert "invalid HTTP response" in messages[3]
    assert all(MARKER not in m for m in messages), messages


@pytest.fixture()
def tls_server(dns: FakeDns) -> Iterator[tuple[_Server, trustme.CA, list[str]]]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("files.example").configure_cert(context)
    names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: names.append(str(name))
    server = _Server("127.0.0.1", tls=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dns.answers["files.example"] = ["127.0.0.1"]
    dns.answers["other.example"] = ["127.0.0.1"]
    yield server, ca, names
    server.shutdown()
    server.server_close()


def test_it_verifies_tls_for_the_host_name_while_connecting_to_the_ip(
    tls_server: tuple[_Server, trustme.CA, list[str]], tmp_path: Path
) -> None:
    server, ca, names = tls_server
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    allowed = ["files.example", "other.example"]
    got = download_to_file(
        f"https://files.example:{server.port}/data.csv",
        tmp_path / "d",
        allowed_hosts=allowed,
        max_bytes=1000,
        verify=trust,
        timeouts=FAST,
    )
    assert got.path.read_bytes() == CSV
    assert names == ["files.example"]  # SNI carried the name, not 127.0.0.1
    assert server.seen.requests[-1][2]["host"] == f"files.example:{server.port}"
    # A name the certificate does not cover fails, as does a CA nobody trusts.
    with pytest.raises(FetchError, match="certificate") as wrong_name:
        download_to_file(
            f"https://other.example:{server.port}/data.csv",
            tmp_path / "d",
            allowed_hosts=allowed,
            max_bytes=1000,
            verify=trust,
        )
    assert wrong_name.value.retryable
    with pytest.raises(FetchError, match="certificate"):
        download_to_file(
            f"https://files.example:{server.port}/data.csv",
            tmp_path / "d",
            allowed_hosts=allowed,
            max_bytes=1000,
        )
    assert len(server.seen.requests) == 1


def test_it_posts_json_and_returns_the_status_without_following_redirects(
    servers: dict[str, _Server],
) -> None:
    hook, victim = servers["checked"], servers["victim"]
    hook.redirect_to = f"http://127.0.0.1:{victim.port}/data.csv"
    url = f"http://127.0.0.2:{hook.port}/hook"
    hook.seen.statuses = [200, 302]
    status = post_json(url, b'{"a": 1}', headers={"X-Sig": "s1"}, allowed_hosts=["127.0.0.2"])
    assert status == 200
    method, path, headers, body = hook.seen.requests[-1]
    assert (method, path, body) == ("POST", "/hook", b'{"a": 1}')
    assert headers["content-type"] == "application/json" and headers["x-sig"] == "s1"
    assert post_json(url, b"{}", headers={}, allowed_hosts=["127.0.0.2"]) == 302
    assert victim.seen.requests == []
    with pytest.raises(FetchRefused):
        post_json(url, b"{}", headers={}, allowed_hosts=["*"])  # 127.0.0.2 is loopback


def test_it_retries_webhooks_with_capped_backoff_and_not_on_refusals(
    servers: dict[str, _Server],
) -> None:
    hook = servers["checked"]
    url = f"http://127.0.0.2:{hook.port}/hook"
    sleeps: list[float] = []
    signatures = (f"t{n}" for n in itertools.count(1))

    def deliver(**kwargs: Any) -> Any:
        return post_json_with_retries(
            url,
            b"{}",
            headers=lambda: {"X-Sig": next(signatures)},
            allowed_hosts=kwargs.pop("allowed", ["127.0.0.2"]),
            sleep=sleeps.append,
            **kwargs,
        )

    hook.seen.statuses = [500, 503, 200]
    outcome = deliver()
    assert outcome.delivered and [a.status for a in outcome.attempts] == [500, 503, 200]
    assert sleeps == [1.0, 2.0]  # what webhook_deliver slept
    assert [r[2]["x-sig"] for r in hook.seen.requests] == ["t1", "t2", "t3"]  # fresh each time
    assert outcome.attempts[0].as_dict().keys() == {"attempt", "at", "status"}

    sleeps.clear()
    hook.seen.statuses = [404]
    outcome = deliver()
    assert not outcome.delivered and len(outcome.attempts) == 1 and sleeps == []

    hook.seen.statuses = [429, 429, 429, 429, 429]
    hook.seen.retry_after = "3"
    outcome = deliver(retry=RetryPolicy(attempts=4, max_backoff_seconds=2.5))
    assert [a.status for a in outcome.attempts] == [429] * 4
    assert sleeps == [2.5, 2.5, 2.5]  # Retry-After honoured up to the cap
    hook.seen.retry_after = None

    sleeps.clear()
    before = len(hook.seen.requests)
    outcome = deliver(allowed=["*"])
    assert not outcome.delivered and len(outcome.attempts) == 1 and sleeps == []
    assert "loopback" in (outcome.attempts[0].error or "")
    assert outcome.attempts[0].as_dict().keys() == {"attempt", "at", "error"}
    assert len(hook.seen.requests) == before

    assert RetryPolicy().delay(10) == 10.0  # capped, never unbounded
