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


# Inherited variables that would point a child at the test run's database, broker or eager mode.
_NOT_INHERITED = ("DATABASE_URL", "CELERY_BROKER_URL", "RECOTEM_TEST_DATABASE_NAME", "RECOTEM_TASKS_EAGER")


def process_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process: its own data dir, nothing inherited that points elsewhere.

    Without DATABASE_URL in `extra` the child uses SQLite under `data_dir`.
    """
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update({"RECOTEM_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "RECOTEM_LOGIN_RATE": "1000/min"})
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def celery(*args: str) -> list[str]:
    """The `celery` console script of this environment, as a user would type it."""
    return [str(Path(sys.executable).parent / "celery"), "-A", "recotem", *args]


def recotem(*args: str) -> list[str]:
    return [sys.executable, "-m", "recotem.cli", *args]


def start(
    cmd: list[str], env: Mapping[str, str], log: Path | None = None, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so `stop` reaches its children); output to `log` if given."""
    if log is None:
        return subprocess.Popen(cmd, env=dict(env), cwd=cwd, start_new_session=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(*procs: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM each process group, wait, then SIGKILL what is left. Signals all before waiting."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def running(cmd: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process for the duration of a block; stop it (and its group) afterwards."""
    proc = start(cmd, env, log)
    try:
        yield proc
    finally:
        stop(proc)


def wait_http_ok(
    url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None, *, any_status: bool = False
) -> float:
    """Poll `url` until it answers 200 (any HTTP answer with `any_status`); returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            status: int | None = httpx.get(url, timeout=2).status_code
        except httpx.HTTPError:
            status = None
        if status is not None and (any_status or status == 200):
            return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {'' if any_status else '200 '}within {timeout} s")


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
def fresh_postgres_database(
    prefix: str = "recotem_it", admin: str = "postgresql://postgres@127.0.0.1:5432/test"
) -> Iterator[str]:
    """Create an empty PostgreSQL database for a process-level test; drop it afterwards.

    `admin` is any database URL on the server that may CREATE DATABASE; the new one sits beside it.
    """
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def children(pid: int) -> list[int]:
    """Direct child process ids (what `recotem up` supervises, what a worker forked)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    direct = children(pid)
    return direct + [grandchild for child in direct for grandchild in descendants(child)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), or 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

