"""`recotem up` as a user runs it: real subprocesses, real HTTP, real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import require
from recotem.testing.processes import (
    celery,
    children,
    free_port,
    fresh_postgres_database,
    postgres_available,
    process_env,
    recotem,
    running,
    wait_http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration


def _login(base: str) -> dict[str, str]:
    tokens = httpx.post(
        f"{base}/api/v1/auth/login/",
        json={"username": "admin", "password": "admin-pass-123"},
        timeout=30,
    ).json()
    return {"Authorization": f"Bearer {tokens['access']}"}


def test_it_runs_the_whole_app_and_uploads_ml100k(tmp_path: Path, ml100k_csv: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(tmp_path / "data", RECOTEM_ADMIN_PASSWORD="admin-pass-123")
    log = tmp_path / "up.log"
    with running(recotem("up", "--port", str(port)), env, log) as up:
        wait_http_ok(f"{base}/api/v1/ping/", timeout=90, proc=up)
        headers = _login(base)
        project = httpx.post(
            f"{base}/api/v1/project/",
            json={
                "name": "movies",
                "user_column": "user_id",
                "item_column": "item_id",
                "time_column": "timestamp",
            },
            headers=headers,
        ).json()
        with open(ml100k_csv, "rb") as fh:
            upload = httpx.post(
                f"{base}/api/v1/training_data/",
                data={"project": str(project["id"])},
                files={"file": ("ml100k.csv", fh, "text/csv")},
                headers=headers,
                timeout=60,
            )
        assert upload.status_code == 201, upload.text
        body = upload.json()
        assert (body["row_count"], body["n_users"], body["n_items"]) == (100_000, 943, 1_682)

        # The worker and beat that `up` started report in.
        ping = wait_until(
            lambda: (
                (p := httpx.get(f"{base}/api/v1/ping/").json())["worker"]["alive"]
                and p["beat"]["alive"]
                and p
            ),
            timeout=60,
            message="worker and beat heartbeats",
        )
        assert ping["success"] is True

        # A task round-trips through the worker of `up` on the embedded broker.
        result = subprocess.run(
            recotem(
                "manage",
                "shell",
                "-c",
                "import json; from recotem.core.tasks import ping; print(json.dumps(ping.delay().get(timeout=60)))",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["pong"] is True

        # Ctrl-C / SIGTERM stops every child cleanly.
        supervised = children(up.pid)
        assert len(supervised) == 3
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
        for child in supervised:
            assert subprocess.run(["kill", "-0", str(child)], capture_output=True).returncode != 0
    assert "Recotem is starting at" in log.read_text()


def test_it_exits_non_zero_when_a_child_dies(tmp_path: Path) -> None:
    port = free_port()
    env = process_env(tmp_path / "data", RECOTEM_ADMIN_PASSWORD="admin-pass-123")
    log = tmp_path / "up.log"
    with running(recotem("up", "--port", str(port)), env, log) as up:
        wait_http_ok(f"http://127.0.0.1:{port}/api/v1/ping/", timeout=90, proc=up)
        supervised = wait_until(
            lambda: len(c := children(up.pid)) == 3 and c, timeout=10, message="3 children"
        )
        subprocess.run(["kill", "-9", str(supervised[-1])], check=True)  # beat
        assert up.wait(timeout=30) == 1
    assert "process exited with code" in log.read_text()


def test_it_prints_a_generated_admin_password_once(tmp_path: Path) -> None:
    env = process_env(tmp_path / "data")
    env.pop("RECOTEM_ADMIN_PASSWORD", None)
    first = subprocess.run(recotem("migrate"), env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "with password:" in first.stdout
    password = first.stdout.split("with password:")[1].split()[0]
    second = subprocess.run(
        recotem("migrate"), env=env, capture_output=True, text=True, timeout=120
    )
    assert "password" not in second.stdout
    check = subprocess.run(
        recotem(
            "manage",
            "shell",
            "-c",
            f"from django.contrib.auth import authenticate; print(bool(authenticate(username='admin', password='{password}')))",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout.strip().endswith("True")


@pytest.mark.parametrize("backend", ["embedded", "redis+postgres"])
def test_it_round_trips_a_task_through_a_separate_worker(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, str] = {}
    pg = None
    if backend != "embedded":
        redis_url = request.getfixturevalue("redis_url")
        require(postgres_available(), "PostgreSQL is not reachable at 127.0.0.1:5432")
        pg = fresh_postgres_database()
        extra = {"DATABASE_URL": pg.__enter__(), "CELERY_BROKER_URL": redis_url}
    try:
        env = process_env(tmp_path / "data", **extra)
        assert (
            subprocess.run(recotem("migrate"), env=env, capture_output=True, timeout=180).returncode
            == 0
        )
        with running(
            celery("worker", "-l", "INFO", "--concurrency", "1"), env, tmp_path / "worker.log"
        ):
            started = time.monotonic()
            result = subprocess.run(
                recotem(
                    "manage",
                    "shell",
                    "-c",
                    "import json, os; from recotem.core.tasks import ping; r = ping.delay().get(timeout=90);"
                    " print(json.dumps({**r, 'me': os.getpid()}))",
                ),
                env=env,
                capture_output=True,
                text=True,
                timeout=150,
            )
            assert result.returncode == 0, (
                result.stderr + (tmp_path / "worker.log").read_text()[-3000:]
            )
            reply = json.loads(result.stdout.strip().splitlines()[-1])
            assert reply["pong"] is True and reply["pid"] != reply["me"]
            assert time.monotonic() - started < 120
    finally:
        if pg is not None:
            pg.__exit__(None, None, None)
