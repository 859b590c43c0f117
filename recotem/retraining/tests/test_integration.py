"""Scheduled retraining with real processes: web, a Celery worker and beat (DatabaseScheduler or ours).

Run once on the embedded default (SQLite + SQLAlchemy broker) and once on PostgreSQL + Redis.
All scenarios share one session so the real minutes they wait for overlap:

A  `* * * * *` fires within the minute → COMPLETED; the next fire with unchanged data → SKIPPED.
B  an SQL data source (MariaDB / SQLite file) → COMPLETED + deployed; new rows → the next fire
   deploys a new model into the same slot (weight kept).
C  broken input from a URL source → FAILED with a readable error, retried with backoff,
   max_retries honoured, each failure webhook received with a valid signature; a second trigger
   while a run is active → 409 with that run's id.
E  an Asia/Tokyo schedule fires at the instant its preview (next_runs) announced.
F  the worker process running a training is SIGKILLed → the reaper fails the run ("worker lost")
   and queues its retry, which completes.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import pytest

from conftest import require
from recotem.lib.signing import verify_signature
from recotem.testing.processes import (
    WebhookRecorder,
    celery,
    free_port,
    fresh_mariadb_database,
    fresh_postgres_database,
    mariadb_available,
    postgres_available,
    process_env,
    recotem,
    running,
    wait_http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration
PASSWORD = "admin-password-1"


class _Hooks(WebhookRecorder):
    received: ClassVar[list[tuple[bytes, str]]] = []

    def do_GET(self) -> None:  # noqa: N802 - the "broken input" source
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"who,what\n1,2\n")


@pytest.fixture
def hooks() -> Iterator[int]:
    _Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture(params=["embedded", "postgres-redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    redis_url = request.getfixturevalue("redis_url") if request.param != "embedded" else ""
    if request.param == "embedded":
        src = tmp_path / "src"
        src.mkdir()
        # `recotem beat`: our DatabaseScheduler subclass, which records runs in beat itself.
        yield {"env": {}, "source_dir": src, "sql_source": None, "beat": recotem("beat")}
        return
    require(postgres_available(), "PostgreSQL is needed")
    require(mariadb_available(), "MariaDB is needed (the SQL source of the shop)")
    # The shop's database lives on another server: one on Recotem's own PostgreSQL server
    # is refused as a source, whatever its name.
    with (
        fresh_postgres_database("recotem_rt") as db_url,
        fresh_mariadb_database("recotem_rt_src") as src_url,
    ):
        # The stock scheduler as the seed docs run it: the worker then records the run.
        stock_beat = celery(
            "beat", "-l", "INFO", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"
        )
        yield {
            "env": {"DATABASE_URL": db_url, "CELERY_BROKER_URL": redis_url},
            "source_dir": None,
            "sql_source": src_url,
            "beat": stock_beat,
        }


def _runs(api: httpx.Client, schedule_id: int) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/retraining_run/?schedule={schedule_id}&page_size=100").json()[
        "results"
    ]


def _project(
    api: httpx.Client,
    name: str,
    csv: Path | None,
    class_name: str = "TopPopRecommender",
    params: dict[str, Any] | None = None,
) -> tuple[int, int]:
    pid = api.post(
        "/api/v1/project/",
        json={
            "name": name,
            "user_column": "user_id",
            "item_column": "item_id",
            "time_column": "timestamp",
        },
    ).json()["id"]
    if csv is not None:
        with open(csv, "rb") as fh:
            r = api.post(
                "/api/v1/training_data/", data={"project": pid}, files={"file": (csv.name, fh)}
            )
        assert r.status_code == 201, r.text
    r = api.post(
        "/api/v1/model_configuration/",
        json={
            "project": pid,
            "name": "cfg",
            "recommender_class_name": class_name,
            "parameters_json": params or {},
        },
    )
    assert r.status_code == 201, r.text
    return pid, r.json()["id"]


def _schedule(api: httpx.Client, pid: int, cid: int, **extra: Any) -> dict[str, Any]:
    r = api.post(
        "/api/v1/retraining_schedule/",
        json={
            "project": pid,
            "model_configuration": cid,
            "cron_expression": "* * * * *",
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_it_retrains_on_schedule_with_real_processes(
    backend: dict[str, Any], hooks: int, tmp_path: Path, ml100k_df: pd.DataFrame
) -> None:
    data_dir = tmp_path / "data"
    allowed = "127.0.0.1" + (f",sqlite:{backend['source_dir']}" if backend["source_dir"] else "")
    env = process_env(
        data_dir,
        RECOTEM_ADMIN_USERNAME="admin",
        RECOTEM_ADMIN_PASSWORD=PASSWORD,
        SECRET_KEY="it-" + "k" * 40,
        RECOTEM_ALLOWED_SOURCE_HOSTS=allowed,
        RECOTEM_RUN_STALE_SECONDS="8",
        RECOTEM_REAPER_SECONDS="3",
        RECOTEM_RUN_HEARTBEAT_SECONDS="2",
        **backend["env"],
    )
    data_dir.mkdir()
    subprocess.run(recotem("migrate"), env=env, check=True, capture_output=True, timeout=180)
    port = free_port()
    small = ml100k_df[ml100k_df.user_id <= 300]
    a_csv, f_csv = tmp_path / "a.csv", tmp_path / "f.csv"
    small.to_csv(a_csv, index=False)
    ml100k_df.to_csv(f_csv, index=False)

    # The SQL source for B: a database of the "shop", never Recotem's own.
    first_rows, later_rows = small[small.user_id <= 250], small[small.user_id > 250]
    if backend["sql_source"]:
        import sqlalchemy as sa

        source_url = backend["sql_source"]
        engine = sa.create_engine(source_url)
        first_rows.to_sql("events", engine, index=False)
        engine.dispose()
    else:
        db = backend["source_dir"] / "events.db"
        source_url = f"sqlite:///{db}"
        with sqlite3.connect(db) as conn:
            first_rows.to_sql("events", conn, index=False)

    logs = data_dir
    with ExitStack() as stack:
        stack.enter_context(running(recotem("web", "--port", str(port)), env, logs / "web.log"))
        worker = stack.enter_context(
            running(
                celery(
                    "worker", "-l", "INFO", "-Q", "celery,retraining,tuning", "--concurrency", "3"
                ),
                env,
                logs / "worker.log",
            )
        )
        stack.enter_context(running(backend["beat"], env, logs / "beat.log"))
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/api/v1/ping/", timeout=60)
        token = httpx.post(
            f"{base}/api/v1/auth/login/",
            json={"username": "admin", "password": PASSWORD},
            timeout=30,
        ).json()
        api = stack.enter_context(
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token['access']}"}, timeout=30
            )
        )
        try:
            _scenarios(api, hooks, source_url, a_csv, f_csv, later_rows, backend, worker)
        except BaseException:
            for name in ("worker", "beat", "web"):
                print(
                    f"--- {name}.log\n" + (logs / f"{name}.log").read_text(errors="replace")[-6000:]
                )
            raise


def _served_within(
    api: httpx.Client, project_id: int, key: str, model_id: int, seconds: float
) -> None:
    """The inference API answers for the project with `model_id` within `seconds` (hot swap)."""

    def served() -> bool:
        response = api.post(
            f"/inference/predict/project/{project_id}",
            json={"user_id": "1", "cutoff": 5},
            headers={"X-API-Key": key},
        )
        return response.status_code == 200 and response.json()["model_id"] == model_id

    wait_until(served, seconds, interval=0.2, message=f"inference serving model {model_id}")


def _scenarios(
    api: httpx.Client,
    hook_port: int,
    source_url: str,
    a_csv: Path,
    f_csv: Path,
    later_rows: pd.DataFrame,
    backend: dict[str, Any],
    worker: subprocess.Popen[bytes],
) -> None:
    # F first: its long training must be running before we kill it.
    pid_f, cfg_f = _project(
        api, "F", f_csv, "IALSRecommender", {"n_components": 300, "train_epochs": 400}
    )
    sched_f = _schedule(api, pid_f, cfg_f, is_enabled=False, max_retries=1, retry_backoff_seconds=1)
    run_f = api.post(f"/api/v1/retraining_schedule/{sched_f['id']}/trigger/", json={}).json()[
        "run_id"
    ]

    created_at = datetime.now(UTC)
    pid_a, cfg_a = _project(api, "A", a_csv)
    sched_a = _schedule(api, pid_a, cfg_a)
    # B auto-deploys: a real model (the gate's floor refuses TopPop itself).
    pid_b, cfg_b = _project(api, "B", None, "RP3betaRecommender")
    r = api.post(
        "/api/v1/data_source/",
        json={
            "project": pid_b,
            "kind": "sql",
            "url": source_url,
            "query": "SELECT user_id, item_id, timestamp FROM events",
        },
    )
    assert r.status_code == 201, r.text
    sched_b = _schedule(api, pid_b, cfg_b, auto_deploy=True)

    # E: fires at the second whole minute from now, on Tokyo's clock.
    tokyo_fire = (datetime.now(ZoneInfo("Asia/Tokyo")) + timedelta(minutes=2)).replace(
        second=0, microsecond=0
    )
    pid_e, cfg_e = _project(api, "E", a_csv)
    sched_e = _schedule(
        api,
        pid_e,
        cfg_e,
        timezone="Asia/Tokyo",
        cron_expression=f"{tokyo_fire.minute} {tokyo_fire.hour} * * *",
    )
    assert datetime.fromisoformat(sched_e["next_runs"][0]) == tokyo_fire

    # C: broken input, retried, webhooks; overlapping trigger → 409.
    pid_c, cfg_c = _project(api, "C", None)
    api.post(
        "/api/v1/data_source/",
        json={"project": pid_c, "kind": "url", "url": f"http://127.0.0.1:{hook_port}/broken.csv"},
    ).raise_for_status()
    sched_c = _schedule(
        api,
        pid_c,
        cfg_c,
        is_enabled=False,
        max_retries=2,
        retry_backoff_seconds=1,
        notify_on_failure=True,
        webhook_url=f"http://127.0.0.1:{hook_port}/hook",
    )
    first_c = api.post(f"/api/v1/retraining_schedule/{sched_c['id']}/trigger/", json={})
    assert first_c.status_code == 202
    again = api.post(f"/api/v1/retraining_schedule/{sched_c['id']}/trigger/", json={})
    assert again.status_code == 409 and again.json()["run_id"] == first_c.json()["run_id"]

    # F: kill the worker process that is training, then make the retry cheap.
    def f_training() -> dict[str, Any] | None:
        run = api.get(f"/api/v1/retraining_run/{run_f}/").json()
        return run if run["status"] == "RUNNING" and run["trained_model"] else None

    running_f = wait_until(f_training, 60, message="F training")
    time.sleep(2)
    host_pid = int(running_f["worker"].rsplit(":", 1)[1])
    assert host_pid != worker.pid  # a prefork child: the worker's pool replaces it
    os.kill(host_pid, signal.SIGKILL)
    r = api.post(
        "/api/v1/model_configuration/",
        json={
            "project": pid_f,
            "name": "fast",
            "recommender_class_name": "TopPopRecommender",
            "parameters_json": {},
        },
    )
    api.patch(
        f"/api/v1/retraining_schedule/{sched_f['id']}/",
        json={"model_configuration": r.json()["id"]},
    )

    # C settles: 1 + max_retries attempts, all FAILED, one webhook each.
    def c_done() -> list[dict[str, Any]] | None:
        runs = _runs(api, sched_c["id"])
        done = len(runs) == 3 and all(x["status"] == "FAILED" for x in runs)
        # Webhooks are delivered by their own task, recorded on the run when it finishes.
        return runs if done and all(x["notification"].get("delivered") for x in runs) else None

    runs_c = wait_until(c_done, 60, message="C retries")
    assert sorted(x["attempt"] for x in runs_c) == [1, 2, 3]
    assert all(x["retry_of"] == first_c.json()["run_id"] for x in runs_c if x["attempt"] > 1)
    assert all("who" in x["error_message"] or "user_id" in x["error_message"] for x in runs_c)
    assert all(x["notification"]["delivered"] for x in runs_c)
    secret = sched_c["webhook_secret"]  # shown on create only; never in a GET
    assert len(_Hooks.received) == 3
    assert all(verify_signature(body, header, secret.encode()) for body, header in _Hooks.received)
    assert {json.loads(body)["run"]["attempt"] for body, _ in _Hooks.received} == {1, 2, 3}
    time.sleep(3)
    assert len(_runs(api, sched_c["id"])) == 3  # max_retries honoured

    # F: the reaper failed the killed run and its retry completed.
    def f_done() -> list[dict[str, Any]] | None:
        runs = _runs(api, sched_f["id"])
        return runs if any(x["status"] == "COMPLETED" for x in runs) else None

    runs_f = wait_until(f_done, 90, message="F retry")
    killed = next(x for x in runs_f if x["id"] == run_f)
    assert killed["status"] == "FAILED" and killed["error_message"].startswith("worker lost"), (
        killed
    )
    retry = next(x for x in runs_f if x["retry_of"] == run_f)
    assert retry["status"] == "COMPLETED" and retry["attempt"] == 2 and retry["trigger"] == "retry"

    # A: the first fire completes within the minute; the next fire with the same data skips.
    def a_two() -> list[dict[str, Any]] | None:
        runs = [x for x in _runs(api, sched_a["id"]) if x["status"] not in ("PENDING", "RUNNING")]
        return runs if len(runs) >= 2 else None

    runs_a = sorted(
        wait_until(a_two, 150, interval=1, message="A two fires"), key=lambda x: x["id"]
    )
    first_a = runs_a[0]
    assert first_a["trigger"] == "schedule" and first_a["status"] == "COMPLETED", first_a
    assert datetime.fromisoformat(first_a["queued_at"]) - created_at < timedelta(seconds=75)
    assert runs_a[1]["status"] == "SKIPPED" and "unchanged" in runs_a[1]["skip_reason"]

    # B: first fire deployed; new rows → the next COMPLETED run deploys a new model into the same slot.
    def b_completed(n: int) -> Any:
        def check() -> list[dict[str, Any]] | None:
            runs = [x for x in _runs(api, sched_b["id"]) if x["status"] == "COMPLETED"]
            return runs if len(runs) >= n else None

        return check

    first_b = wait_until(b_completed(1), 30, interval=1, message="B first")[-1]
    assert first_b["gate_decision"] == "deployed"
    key = api.post(
        "/api/v1/api_keys/", json={"project": pid_b, "name": "app", "scopes": ["predict"]}
    ).json()["key"]
    _served_within(api, pid_b, key, first_b["trained_model"], seconds=5)
    if backend["sql_source"]:
        import sqlalchemy as sa

        engine = sa.create_engine(source_url)
        later_rows.to_sql("events", engine, index=False, if_exists="append")
        engine.dispose()
    else:
        with sqlite3.connect(source_url.removeprefix("sqlite:///")) as conn:
            later_rows.to_sql("events", conn, index=False, if_exists="append")
    second_b = wait_until(b_completed(2), 80, interval=1, message="B second")[0]
    assert second_b["data_rows"] == first_b["data_rows"] + len(later_rows)
    slots = api.get(f"/api/v1/deployment_slot/?project={pid_b}").json()["results"]
    assert len(slots) == 1 and slots[0]["weight"] == 100
    assert slots[0]["trained_model"] == second_b["trained_model"] != first_b["trained_model"]
    assert second_b["gate_decision"] == "deployed" and second_b["deployed_slot"] == slots[0]["id"]
    _served_within(api, pid_b, key, second_b["trained_model"], seconds=5)

    # E: fired at the announced instant (within the beat's few seconds).
    runs_e = wait_until(lambda: _runs(api, sched_e["id"]), 30, message="E fired")
    fired = datetime.fromisoformat(runs_e[-1]["queued_at"])
    assert timedelta(0) <= fired - tokyo_fire < timedelta(seconds=10), (fired, tokyo_fire)

    ping = api.get("/api/v1/ping/").json()
    assert ping["worker"]["alive"] and ping["beat"]["alive"]
    assert ping["retraining"]["overdue_schedules"] == 0
