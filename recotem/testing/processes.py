"""Helpers for integration tests that run real recotem / Celery processes."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Inherited variables that would point a child at the test run's database, broker or eager mode.
_NOT_INHERITED = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "RECOTEM_TEST_DATABASE_NAME",
    "RECOTEM_TASKS_EAGER",
)


def process_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process: its own data dir, nothing inherited that points elsewhere.

    Without DATABASE_URL in `extra` the child uses SQLite under `data_dir`.
    """
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(
        {
            "RECOTEM_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
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
        return subprocess.Popen(
            cmd,
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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
    url: str,
    timeout: float = 60,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    any_status: bool = False,
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


@contextmanager
def private_redis(log_dir: Path) -> Iterator[str]:
    """A Redis server of our own on a free port (never the machine's shared one), for the
    duration of a block; yields its URL. Tests may stop and restart it (``redis_stop`` /
    ``redis_start``) to simulate a broker outage without touching anyone else's Redis."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    proc = redis_start(port, log_dir)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def redis_start(port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start redis-server on ``port`` (no persistence) and wait until it answers."""
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(log_dir)]  # fmt: skip
    proc = start(cmd, os.environ, log_dir / f"redis-{port}.log")
    wait_until(lambda: redis_available(f"redis://127.0.0.1:{port}/0"), 15, 0.1, f"redis on {port}")
    return proc


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


MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"


def _mariadb_connect(url: str, *, autocommit: bool = False):  # type: ignore[no-untyped-def]
    import pymysql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        connect_timeout=2,
        autocommit=autocommit,
    )


def mariadb_available(url: str = MARIADB_ADMIN) -> bool:
    try:
        _mariadb_connect(url).close()
        return True
    except Exception:
        return False


@contextmanager
def fresh_mariadb_database(prefix: str = "recotem_it", admin: str = MARIADB_ADMIN) -> Iterator[str]:
    """Create an empty MariaDB/MySQL database (a data source on another server than Recotem's
    own); yields its SQLAlchemy URL and drops it afterwards."""
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = _mariadb_connect(admin, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    try:
        yield admin.rstrip("/") + "/" + name
    finally:
        conn = _mariadb_connect(admin, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def children(pid: int) -> list[int]:
    """Direct child process ids (what `recotem up` supervises, what a worker forked)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    direct = children(pid)
    return direct + [grandchild for child in direct for grandchild in descendants(child)]


def command_line(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS), or 0 when it is gone."""
    return _status_kb(pid, "VmRSS:") / 1024


def reset_peak_rss(pid: int) -> None:
    """Start the peak (VmHWM) afresh from the current RSS, so the next `peak_rss_mb` measures
    only what happens from now on (Linux `clear_refs` 5; needs the right to ptrace `pid`)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), or 0 when it is gone."""
    return _status_kb(pid, "VmHWM:") / 1024


# Any key works against moto's server; boto3 only needs some credentials to sign with.
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "recotem-test",
    "AWS_SECRET_ACCESS_KEY": "recotem-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_binary() -> str | None:
    """The `moto_server` console script of this environment (moto[server], the test extra)."""
    import shutil

    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """A real S3 API server (moto's server mode) on a free port for a block; yields its URL."""
    binary = moto_server_binary()
    if binary is None:
        raise FileNotFoundError("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([binary, "-H", "127.0.0.1", "-p", str(port)], os.environ, log_dir / "moto.log")
    try:
        wait_http_ok(f"{url}/moto-api/", timeout=30, proc=proc, any_status=True)
        yield url
    finally:
        stop(proc)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]  # boto3 ships no types
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def s3_bucket(endpoint: str, prefix: str = "recotem-test") -> str:
    """Create a fresh bucket on the server; returns its name."""
    import uuid

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    """Every object key in the bucket."""
    client = s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


class WebhookRecorder(http.server.BaseHTTPRequestHandler):
    """A webhook receiver for tests: records each POST's (body, signature header) and answers
    204. Subclass it with its own ``received = []`` so tests do not share one list."""

    received: ClassVar[list[tuple[bytes, str]]] = []

    def do_POST(self) -> None:  # noqa: N802
        from recotem.lib.signing import HEADER_NAME

        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((body, self.headers.get(HEADER_NAME, "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass
