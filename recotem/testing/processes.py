"""Helpers for integration tests that run real recotem / Celery processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process: its own data dir, nothing inherited that points elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update({"RECOTEM_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "RECOTEM_LOGIN_RATE": "1000/min"})
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def celery(*args: str) -> list[str]:
    """The `celery` console script of this environment, as a user would type it."""
    return [str(Path(sys.executable).parent / "celery"), "-A", "recotem", *args]


def recotem(*args: str) -> list[str]:
    return [sys.executable, "-m", "recotem.cli", *args]


@contextmanager
def running(cmd: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process for the duration of a block; stop it (and its group) afterwards."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http_ok(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll `url` until it answers 200; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def wait_until(predicate, timeout: float, interval: float = 0.5, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached within {timeout} s")


def redis_available(url: str = "redis://127.0.0.1:6379/0") -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


def postgres_available(url: str = "postgresql://postgres@127.0.0.1:5432/test") -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
        return True
    except Exception:
        return False


@contextmanager
def fresh_postgres_database(prefix: str = "recotem_it") -> Iterator[str]:
    """Create an empty PostgreSQL database for a process-level test; drop it afterwards."""
    import uuid

    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
