"""A whole running Recotem for an integration test: real processes, real HTTP, one data dir.

Two shapes, the two the product ships:

* :func:`embedded` — ``recotem up`` (SQLite, the embedded broker; web, worker and beat under
  one supervisor; the inference API mounted on the web server at ``/inference/``);
* :func:`postgres_redis` — ``recotem migrate``, then ``recotem web``, ``recotem worker``,
  ``recotem beat`` and ``recotem inference`` as separate processes on a PostgreSQL database and
  a Redis broker the caller provides (``fresh_postgres_database``, ``private_redis``).

Each process logs to ``<data_dir>/<name>.log``; :meth:`Stack.explained` prints the tails of
those logs when the block it wraps fails, so a failing test says what the processes saw.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from recotem.lib.signing import RequestTokens, request_token_keys
from recotem.testing import processes

ADMIN = "admin"
PASSWORD = "admin-password-1"


@dataclass
class Stack:
    """Running processes sharing one data dir and environment; ``web`` and ``inference`` are
    base URLs (``inference`` ends in ``/inference`` or is a separate server's root)."""

    data_dir: Path
    env: dict[str, str]
    web: str = ""
    inference: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    clients: list[httpx.Client] = field(default_factory=list)
    _admin: httpx.Client | None = None

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = processes.start(cmd, self.env, self.data_dir / f"{name}.log")
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        # Clients first: a server's graceful shutdown would wait for their idle connections.
        for client in self.clients:
            client.close()
        processes.stop(*self.procs.values())

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {log.name}\n" + log.read_text(errors="replace")[-tail:]
            for log in sorted(self.data_dir.glob("*.log"))
        )

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Run a block; when it fails, print the processes' log tails before re-raising."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def api(self) -> httpx.Client:
        """The admin's client of ``/api/v1/``, logged in once through the real login endpoint."""
        if self._admin is None:
            self._admin = login(self.web)
            self.clients.append(self._admin)
        return self._admin

    def request_tokens(self) -> RequestTokens:
        """Verifies the request ids the stack's inference signs (it shares the stack's key)."""
        return RequestTokens(request_token_keys(self.env["SECRET_KEY"]))

    def key_client(self, key: str) -> httpx.Client:
        """A client of the inference API with an API key (closed when the stack stops)."""
        client = httpx.Client(base_url=self.inference, headers={"X-API-Key": key}, timeout=60)
        self.clients.append(client)
        return client


def login(base: str, username: str = ADMIN, password: str = PASSWORD) -> httpx.Client:
    """``POST /api/v1/auth/login/``; a client of ``base/api/v1`` carrying the access token."""
    tokens = httpx.post(
        f"{base}/api/v1/auth/login/", json={"username": username, "password": password}, timeout=30
    )
    assert tokens.status_code == 200, tokens.text
    return httpx.Client(
        base_url=f"{base}/api/v1",
        headers={"Authorization": f"Bearer {tokens.json()['access']}"},
        timeout=60,
    )


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of every process of a stack: an admin to log in as, one secret key (the
    processes must agree on it to verify each other's signed request ids and artifacts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "SECRET_KEY": "stack-" + "k" * 44,
        "RECOTEM_ADMIN_USERNAME": ADMIN,
        "RECOTEM_ADMIN_PASSWORD": PASSWORD,
        **extra,
    }
    return processes.process_env(data_dir, **values)


@contextmanager
def embedded(data_dir: Path, *, concurrency: int = 2, **extra: str) -> Iterator[Stack]:
    """``recotem up`` on SQLite and the embedded broker, until the block ends."""
    stack = Stack(data_dir, stack_env(data_dir, **extra))
    port = processes.free_port()
    stack.web = f"http://127.0.0.1:{port}"
    stack.inference = f"{stack.web}/inference"
    up = stack.start(
        "up", processes.recotem("up", "--port", str(port), "--concurrency", str(concurrency))
    )
    try:
        with stack.explained():
            processes.wait_http_ok(f"{stack.web}/api/v1/ping/", timeout=120, proc=up)
        yield stack
    finally:
        stack.stop()


@contextmanager
def postgres_redis(
    data_dir: Path, *, database_url: str, broker_url: str, concurrency: int = 2, **extra: str
) -> Iterator[Stack]:
    """Web, worker, beat and a separate inference server on PostgreSQL + Redis."""
    stack = Stack(
        data_dir,
        stack_env(data_dir, DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, **extra),
    )
    migrated = subprocess.run(
        processes.recotem("migrate"), env=stack.env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    web_port, inference_port = processes.free_port(), processes.free_port()
    stack.web = f"http://127.0.0.1:{web_port}"
    stack.inference = f"http://127.0.0.1:{inference_port}"
    try:
        web = stack.start("web", processes.recotem("web", "--port", str(web_port)))
        stack.start(
            "worker",
            processes.recotem(
                "worker", "--concurrency", str(concurrency), "-Q", "celery,retraining,tuning"
            ),
        )
        stack.start("beat", processes.recotem("beat"))
        inference = stack.start(
            "inference", processes.recotem("inference", "--port", str(inference_port))
        )
        with stack.explained():
            processes.wait_http_ok(f"{stack.web}/api/v1/ping/", timeout=120, proc=web)
            # /health may be 503 while nothing is deployed: any answer means it serves.
            processes.wait_http_ok(
                f"{stack.inference}/health", timeout=120, proc=inference, any_status=True
            )
        yield stack
    finally:
        stack.stop()


def wait_job(api: httpx.Client, path: str, timeout: float = 180) -> dict[str, Any]:
    """Poll a job resource (trained model, tuning job, retraining run) until it has ended."""

    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(path).json()
        return body if body["status"] not in ("PENDING", "RUNNING") else None

    result: dict[str, Any] = processes.wait_until(ended, timeout, 0.2, f"{path} to end")
    return result
