"""Webhooks connect only to the address that was checked and follow no redirect."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from recotem.lib.signing import HEADER_NAME, verify_signature
from recotem.retraining.notify import webhook_deliver


class _Hook(http.server.BaseHTTPRequestHandler):
    hits: list[tuple[str, str]] = []
    status = 204
    location = ""

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits.append((self.server.server_address[0], self.headers.get(HEADER_NAME, "")))  # type: ignore[index]
        type(self).last_body = body
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[tuple[int, type[_Hook]]]:
    class Hook(_Hook):
        hits: list[tuple[str, str]] = []

    for _ in range(20):
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            servers = [
                http.server.ThreadingHTTPServer((ip, port), Hook)
                for ip in ("127.0.0.2", "127.0.0.1")
            ]
            break
        except OSError:
            continue
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, Hook
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_rebinding_resolver_cannot_send_a_webhook_to_loopback(
    hooks: tuple[int, type[_Hook]], settings: Any, monkeypatch: Any
) -> None:
    port, hook = hooks
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    real = socket.getaddrinfo
    calls = [0]

    def getaddrinfo(host: Any, p: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.example":
            return real(host, p, *args, **kwargs)
        calls[0] += 1  # allowed on the check, loopback on any second look
        ip = "127.0.0.2" if calls[0] % 2 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(p or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    delivery = webhook_deliver(
        url=f"http://hooks.example:{port}/hook", secret="s3cret", payload={"event": "x"}
    )
    assert delivery.delivered
    assert [ip for ip, _ in hook.hits] == ["127.0.0.2"]
    assert verify_signature(hook.last_body, hook.hits[0][1], b"s3cret")
    assert calls[0] == 1  # resolved once for the check, connected to that address


def test_it_does_not_follow_a_webhook_redirect(
    hooks: tuple[int, type[_Hook]], settings: Any
) -> None:
    port, hook = hooks
    hook.status = 307
    hook.location = f"http://127.0.0.1:{port}/elsewhere"
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = ["127.0.0.2"]
    delivery = webhook_deliver(url=f"http://127.0.0.2:{port}/hook", secret="s", payload={})
    assert not delivery.delivered
    assert [ip for ip, _ in hook.hits] == ["127.0.0.2"]  # never the redirect target
    assert delivery.attempts == [{"attempt": 1, "at": delivery.attempts[0]["at"], "status": 307}]


def test_it_refuses_a_webhook_to_a_host_not_allowed(settings: Any) -> None:
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = []
    delivery = webhook_deliver(url="http://127.0.0.1:9/hook", secret="s", payload={})
    assert not delivery.delivered and len(delivery.attempts) == 1
    assert "RECOTEM_ALLOWED_SOURCE_HOSTS" in delivery.attempts[0]["error"]
