"""Fault injection with real processes: break things, then check what the user sees.

One stack per backend (web + a Celery worker + `recotem beat`), shared by every scenario so the
minutes they wait for are paid once. On PostgreSQL + a private Redis (which this test stops and
starts; never the machine's shared one):

E  a cron edit on a schedule whose last fire is hours old → no fire before next_runs[0];
A  beat SIGKILLed within a second of a fire, restarted → exactly one run for that instant;
B  Redis stopped 60 s spanning a fire and a manual trigger → no 5xx; both runs (and a model
   trained meanwhile) finish within 60 s of its return; no duplicates;
C  the worker's PostgreSQL connections terminated mid-run → COMPLETED, or FAILED and retried;
D  the worker SIGKILLed in each stage (read, tune, train, gate, deploy) → every run ends
   within 2 minutes, the slot serves exactly one model, from a COMPLETED run;
F  cancel during a retune → CANCELLED within 10 s, and the worker takes the next run.

On the embedded default (SQLite + its broker) E, A and F run too. Every run seen is checked at
the end: none lost, duplicated or stuck. The counts are printed (docs/reliability.md).
RECOTEM_FAILPOINTS makes each stage last a few seconds, so a kill lands inside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from conftest import REPO_ROOT, require
from recotem.testing import processes

pytestmark = pytest.mark.integration
logging.getLogger("httpx").setLevel(logging.WARNING)  # hundreds of polls would drown the report
PASSWORD = "admin-password-1"
STAGE_SECONDS = 3  # each pipeline stage lasts at least this long (RECOTEM_FAILPOINTS)
TERMINAL = {"COMPLETED", "FAILED", "SKIPPED", "CANCELLED"}
RP3 = ("RP3betaRecommender", {})


@dataclass
class Stack:
    base: str
    data_dir: Path
    env: dict[str, str]
    database_url: str | None
    redis_port: int | None = None
    redis: subprocess.Popen[bytes] | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api: httpx.Client = field(default_factory=httpx.Client)
    faults: Counter[str] = field(default_factory=Counter)
    schedules: list[int] = field(default_factory=list)

    def start(self, name: str) -> None:
        cmd = {
            "web": processes.recotem(
                "web", "--host", "127.0.0.1", "--port", self.base.rsplit(":", 1)[1]
            ),
            "worker": processes.celery(
                "worker",
                "-l",
                "INFO",
                "-c",
                "2",
                "-Q",
                "celery,tuning,retraining",
                "-n",
                "faults@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ),  # fmt: skip
            "beat": processes.recotem("beat"),
        }[name]
        env = {**self.env, "PGAPPNAME": f"recotem-{name}"}
        self.procs[name] = processes.start(cmd, env, self.data_dir / f"{name}.log", cwd=REPO_ROOT)

    def kill(self, name: str) -> None:
        """SIGKILL the process and all of its children (a worker's pool too), at once."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()
        self.faults[f"{name} SIGKILL"] += 1

    def redis_stop(self) -> None:
        assert self.redis is not None
        processes.stop(self.redis)
        self.faults["redis stopped 60 s"] += 1

    def redis_start(self) -> None:
        assert self.redis_port is not None
        self.redis = processes.redis_start(self.redis_port, self.data_dir)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.data_dir.glob("*.log"))
        )

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read or change the database directly (the test's own connection)."""
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url, autocommit=True) as conn:
                cur = conn.execute(query.replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description else []
        with sqlite3.connect(self.data_dir / "db.sqlite3", timeout=30) as conn:
            return list(conn.execute(query, params).fetchall())


def _wait(predicate: Callable[[], Any], timeout: float, what: str, stack: Stack) -> Any:
    try:
        return processes.wait_until(predicate, timeout, 0.25, what)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{stack.logs()}")


@contextmanager
def _stack(tmp_path: Path, database_url: str | None, redis_port: int | None) -> Iterator[Stack]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    extra: dict[str, str] = {}
    if database_url:
        extra["DATABASE_URL"] = database_url
    if redis_port:
        extra["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    env = processes.process_env(
        data_dir,
        RECOTEM_ADMIN_USERNAME="admin",
        RECOTEM_ADMIN_PASSWORD=PASSWORD,
        SECRET_KEY="faults-" + "k" * 40,
        RECOTEM_ACCESS_TOKEN_MINUTES="240",
        RECOTEM_RUN_STALE_SECONDS="10",
        RECOTEM_REAPER_SECONDS="3",
        RECOTEM_RUN_HEARTBEAT_SECONDS="2",
        RECOTEM_PENDING_RESEND_SECONDS="20",
        RECOTEM_FAILPOINTS=",".join(f"{s}:{STAGE_SECONDS}" for s in ("read", "tune", "train", "gate", "deploy")),
        **extra,
    )  # fmt: skip
    subprocess.run(
        processes.recotem("migrate"), env=env, check=True, capture_output=True, timeout=300
    )
    stack = Stack(
        f"http://127.0.0.1:{processes.free_port()}", data_dir, env, database_url, redis_port
    )
    if redis_port:
        stack.redis_start()
    for name in ("web", "worker", "beat"):
        stack.start(name)
    try:
        processes.wait_http_ok(f"{stack.base}/api/v1/ping/", 90, stack.procs["web"])
        token = httpx.post(
            f"{stack.base}/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
        ).json()["access"]
        stack.api = httpx.Client(
            base_url=f"{stack.base}/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )
        yield stack
    finally:
        processes.stop(*stack.procs.values(), *([stack.redis] if stack.redis else []))
        stack.api.close()


@pytest.fixture(params=["postgres-redis", "embedded"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with ExitStack() as cleanup:
        database_url = redis_port = None
        if request.param == "postgres-redis":
            require(processes.postgres_available(), "PostgreSQL is needed")
            require(shutil.which("redis-server") is not None, "redis-server is not installed")
            database_url = cleanup.enter_context(
                processes.fresh_postgres_database("recotem_faults")
            )
            redis_port = processes.free_port()
        yield cleanup.enter_context(_stack(tmp_path, database_url, redis_port))


# --- helpers ----------------------------------------------------------------------------------


def _project(
    stack: Stack, name: str, csv: Path, model: tuple[str, dict[str, Any]] = RP3
) -> tuple[int, int]:
    api = stack.api
    pid = api.post(
        "/project/", json={"name": name, "user_column": "user_id", "item_column": "item_id"}
    ).json()["id"]
    with open(csv, "rb") as fh:
        r = api.post("/training_data/", data={"project": pid}, files={"file": (csv.name, fh)})
    assert r.status_code == 201, r.text
    r = api.post(
        "/model_configuration/",
        json={
            "project": pid,
            "name": "cfg",
            "recommender_class_name": model[0],
            "parameters_json": model[1],
        },
    )
    assert r.status_code == 201, r.text
    return pid, r.json()["id"]


def _schedule(stack: Stack, pid: int, cid: int, **extra: Any) -> dict[str, Any]:
    body = {"project": pid, "model_configuration": cid, "cron_expression": "0 3 * * *", **extra}
    r = stack.api.post("/retraining_schedule/", json=body)
    assert r.status_code == 201, r.text
    stack.schedules.append(r.json()["id"])
    return r.json()


def _runs(stack: Stack, sid: int) -> list[dict[str, Any]]:
    r = stack.api.get(f"/retraining_run/?schedule={sid}&page_size=500")
    assert r.status_code == 200, r.text
    return sorted(r.json()["results"], key=lambda x: x["id"])


def _run(stack: Stack, run_id: int) -> dict[str, Any]:
    return stack.api.get(f"/retraining_run/{run_id}/").json()


def _trigger(stack: Stack, sid: int, *, force: bool = True) -> dict[str, Any]:
    r = stack.api.post(f"/retraining_schedule/{sid}/trigger/", json={"force": force})
    assert r.status_code == 202, r.text
    return r.json()


def _settled(stack: Stack, sid: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until every run of the schedule ended (a retry included); returns them."""

    def done() -> list[dict[str, Any]] | None:
        runs = _runs(stack, sid)
        return runs if runs and all(r["status"] in TERMINAL for r in runs) else None

    return _wait(done, timeout, f"schedule {sid}'s runs to end", stack)


def _in_stage(stack: Stack, run_id: int, stage: str) -> dict[str, Any]:
    def there() -> dict[str, Any] | None:
        run = _run(stack, run_id)
        return run if run["status"] == "RUNNING" and run["stage"] == stage else None

    return _wait(there, 90, f"run {run_id} in stage {stage}", stack)


def _slot_serves_a_completed_run(stack: Stack, pid: int, sid: int) -> None:
    slots = stack.api.get(f"/deployment_slot/?project={pid}").json()["results"]
    assert len(slots) == 1, slots
    completed = {
        r["trained_model"]
        for r in _runs(stack, sid)
        if r["status"] == "COMPLETED" and r["gate_decision"] == "deployed"
    }
    assert slots[0]["trained_model"] in completed, (slots, _runs(stack, sid))


def _next_minute_start(seconds_in: float = 1.0) -> None:
    """Sleep until ``seconds_in`` seconds after the next whole minute."""
    now = time.time()
    time.sleep(60 - now % 60 + seconds_in)


# --- scenarios --------------------------------------------------------------------------------


def _edit_never_fires_early(stack: Stack, csv: Path) -> None:
    pid, cid = _project(stack, "edit", csv)
    sched = _schedule(stack, pid, cid, cron_expression="0 2 * * *")
    hours_ago = datetime.now(UTC) - timedelta(hours=5)
    # Its last fire was hours ago (as beat and the run history remember it).
    stack.sql(
        "UPDATE django_celery_beat_periodictask SET last_run_at = ? WHERE name = ?",
        (
            hours_ago.isoformat() if not stack.database_url else hours_ago,
            f"recotem-retrain-{sched['id']}",
        ),
    )
    stack.sql(
        "UPDATE retraining_retrainingschedule SET fires_from = ? WHERE id = ?",
        (hours_ago.isoformat() if not stack.database_url else hours_ago, sched["id"]),
    )
    just_passed = datetime.now(UTC) - timedelta(minutes=1)
    r = stack.api.patch(
        f"/retraining_schedule/{sched['id']}/",
        json={
            "cron_expression": f"{just_passed.minute} {just_passed.hour} * * *",
            "timezone": "UTC",
        },
    )
    assert r.status_code == 200, r.text
    first = datetime.fromisoformat(r.json()["next_runs"][0])
    assert first > datetime.now(UTC) + timedelta(hours=23)  # the instant that passed is tomorrow's
    time.sleep(15)  # beat notices an edit within ~5 s: a wrong is_due would have fired by now
    assert _runs(stack, sched["id"]) == []
    stack.faults["cron edit"] += 1


def _beat_killed_after_a_fire(stack: Stack, csv: Path) -> None:
    pid, cid = _project(stack, "beat", csv)
    sched = _schedule(stack, pid, cid, cron_expression="* * * * *")
    fired = _wait(lambda: _runs(stack, sched["id"]), 75, "the every-minute schedule to fire", stack)
    t0 = time.monotonic()
    stack.kill("beat")
    assert time.monotonic() - t0 < 1.0
    stack.start("beat")
    instant = fired[0]["fire_at"]
    time.sleep(15)  # a restarted beat that forgot the fire would fire the same instant now
    same = [r for r in _runs(stack, sched["id"]) if r["fire_at"] == instant]
    assert len(same) == 1, same
    stack.api.patch(f"/retraining_schedule/{sched['id']}/", json={"is_enabled": False})


def _cancel_during_a_retune(stack: Stack, csv: Path) -> None:
    pid, cid = _project(stack, "cancel", csv)
    split = stack.api.post("/split_config/", json={"project": pid}).json()["id"]
    ev = stack.api.post("/evaluation_config/", json={"project": pid}).json()["id"]
    sched = _schedule(
        stack, pid, cid, is_enabled=False, retune=True, split_config=split, evaluation_config=ev,
        n_trials=500, tried_algorithms=["IALSRecommender", "RP3betaRecommender"],
    )  # fmt: skip
    run = _trigger(stack, sched["id"])
    _in_stage(stack, run["run_id"], "tune")
    time.sleep(STAGE_SECONDS + 2)  # past the failpoint: trials are running
    asked = time.monotonic()
    r = stack.api.post(f"/retraining_run/{run['run_id']}/cancel/")
    assert r.status_code == 202, r.text
    ended = _wait(
        lambda: (x := _run(stack, run["run_id"]))["status"] in TERMINAL and x,
        10,
        "the cancel",
        stack,
    )
    assert ended["status"] == "CANCELLED" and time.monotonic() - asked <= 10
    assert stack.api.post(f"/retraining_run/{run['run_id']}/cancel/").status_code == 409
    job = stack.api.get(f"/parameter_tuning_job/{ended['tuning_job']}/").json()
    assert job["status"] == "FAILED" and "cancel" in job["error"]
    # The worker is free again: the next run completes.
    pid2, cid2 = _project(stack, "after-cancel", csv)
    nxt = _schedule(stack, pid2, cid2, is_enabled=False)
    follow = _trigger(stack, nxt["id"])
    done = _wait(
        lambda: (x := _run(stack, follow["run_id"]))["status"] in TERMINAL and x,
        90,
        "the next run",
        stack,
    )
    assert done["status"] == "COMPLETED", done
    assert not [x for x in _runs(stack, sched["id"]) if x["id"] != run["run_id"]]  # no retry
    stack.faults["cancel"] += 1


def _redis_outage(stack: Stack, csv: Path) -> None:
    pid_b, cid_b = _project(stack, "outage-fire", csv)
    pid_m, cid_m = _project(stack, "outage-manual", csv)
    manual = _schedule(stack, pid_m, cid_m, is_enabled=False)
    _next_minute_start(2)
    fire = _schedule(stack, pid_b, cid_b, cron_expression="* * * * *")  # next fire: in ~58 s
    stack.redis_stop()
    down = time.monotonic()
    statuses: list[int] = []
    trig = stack.api.post(f"/retraining_schedule/{manual['id']}/trigger/", json={"force": True})
    statuses.append(trig.status_code)
    assert trig.status_code == 202 and trig.json()["queued"] is False, trig.text
    model = stack.api.post(
        "/trained_model/", json={"configuration": cid_m, "data_loc": _data_id(stack, pid_m)}
    )
    statuses.append(model.status_code)
    assert model.status_code == 201, model.text
    while time.monotonic() - down < 60:
        for url in (
            "/ping/",
            f"/retraining_run/?schedule={fire['id']}",
            f"/trained_model/{model.json()['id']}/",
        ):
            statuses.append(stack.api.get(url).status_code)
        time.sleep(5)
    assert all(s < 500 for s in statuses), statuses
    fired_during = [r for r in _runs(stack, fire["id"]) if r["trigger"] == "schedule"]
    assert fired_during and all(r["status"] in ("PENDING", "SKIPPED") for r in fired_during)
    stack.redis_start()
    back = time.monotonic()

    def all_done() -> bool:
        runs = _runs(stack, manual["id"]) + [
            r for r in _runs(stack, fire["id"]) if r["id"] <= fired_during[-1]["id"]
        ]
        trained = stack.api.get(f"/trained_model/{model.json()['id']}/").json()
        return all(r["status"] in TERMINAL for r in runs) and trained["status"] == "COMPLETED"

    _wait(all_done, 60, "the work recorded during the outage", stack)
    assert time.monotonic() - back <= 60
    assert [r["status"] for r in _runs(stack, manual["id"])] == ["COMPLETED"]
    stack.api.patch(f"/retraining_schedule/{fire['id']}/", json={"is_enabled": False})
    runs = _settled(stack, fire["id"])
    assert max(Counter(r["fire_at"] for r in runs).values()) == 1  # one run per instant
    assert any(r["status"] == "COMPLETED" for r in runs)


def _data_id(stack: Stack, pid: int) -> int:
    return int(stack.api.get(f"/training_data/?project={pid}").json()["results"][0]["id"])


def _connections_terminated(stack: Stack, csv: Path) -> None:
    pid, cid = _project(stack, "pg-terminate", csv)
    sched = _schedule(stack, pid, cid, is_enabled=False, max_retries=2, retry_backoff_seconds=1)
    run = _trigger(stack, sched["id"])
    _in_stage(stack, run["run_id"], "train")
    killed = stack.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
        ("recotem-worker",),
    )
    assert killed, "the worker had no connection to terminate"
    stack.faults["worker connections terminated"] += 1
    runs = _settled(stack, sched["id"])
    assert runs[-1]["status"] == "COMPLETED", runs
    assert all(
        r["status"] == "COMPLETED" or (r["status"] == "FAILED" and r["retryable"]) for r in runs
    )


def _worker_killed_in_each_stage(stack: Stack, csv: Path) -> None:
    pid, cid = _project(stack, "kill", csv)
    split = stack.api.post("/split_config/", json={"project": pid}).json()["id"]
    ev = stack.api.post("/evaluation_config/", json={"project": pid}).json()["id"]
    plain = _schedule(
        stack, pid, cid, is_enabled=False, auto_deploy=True, max_retries=3, retry_backoff_seconds=1
    )
    first = _trigger(stack, plain["id"])
    assert _settled(stack, plain["id"])[-1]["gate_decision"] == "deployed", _runs(
        stack, plain["id"]
    )
    for stage in ("read", "train", "gate", "deploy", "tune"):
        if stage == "tune":  # only a retuning run has that stage
            stack.api.patch(
                f"/retraining_schedule/{plain['id']}/",
                json={"retune": True, "split_config": split, "evaluation_config": ev, "n_trials": 2,
                      "tried_algorithms": ["RP3betaRecommender"]},
            )  # fmt: skip
        run = _trigger(stack, plain["id"])
        began = time.monotonic()
        _in_stage(stack, run["run_id"], stage)
        stack.kill("worker")
        stack.start("worker")
        runs = _settled(stack, plain["id"], timeout=120)
        assert time.monotonic() - began <= 120
        this = [r for r in runs if r["id"] == run["run_id"] or r["retry_of"] == run["run_id"]]
        assert this[0]["status"] == "FAILED" and this[0]["error_message"].startswith(
            "worker lost"
        ), this
        assert this[-1]["status"] == "COMPLETED", this
        _slot_serves_a_completed_run(stack, pid, plain["id"])
    del first


def _no_run_lost_duplicated_or_stuck(stack: Stack) -> dict[str, int]:
    runs = [r for sid in stack.schedules for r in _runs(stack, sid)]
    stuck = [r for r in runs if r["status"] not in TERMINAL]
    fires = Counter((r["schedule"], r["fire_at"]) for r in runs if r["fire_at"])
    duplicated = sum(n - 1 for n in fires.values() if n > 1)
    max_retries = {
        sid: stack.api.get(f"/retraining_schedule/{sid}/").json()["max_retries"]
        for sid in stack.schedules
    }

    def retried(r: dict[str, Any]) -> bool:
        first = r["retry_of"] or r["id"]
        return any(x["retry_of"] == first and x["attempt"] == r["attempt"] + 1 for x in runs)

    lost = [
        r for r in runs
        if r["status"] == "FAILED" and r["retryable"] and r["attempt"] <= max_retries[r["schedule"]] and not retried(r)
    ]  # fmt: skip
    figures = {
        "faults": sum(stack.faults.values()),
        "runs": len(runs),
        "lost": len(lost),
        "duplicated": duplicated,
        "stuck": len(stuck),
    }
    print("\nfault injection:", json.dumps({**figures, "by fault": dict(stack.faults)}))
    assert (figures["lost"], figures["duplicated"], figures["stuck"]) == (0, 0, 0), (
        lost,
        stuck,
        fires,
    )
    return figures


def test_it_survives_crashes_outages_and_edits(
    stack: Stack, tmp_path: Path, ml100k_df: pd.DataFrame
) -> None:
    csv = tmp_path / "small.csv"
    ml100k_df[ml100k_df.user_id <= 150].to_csv(csv, index=False)
    _edit_never_fires_early(stack, csv)
    _beat_killed_after_a_fire(stack, csv)
    _cancel_during_a_retune(stack, csv)
    if stack.database_url:
        _redis_outage(stack, csv)
        _connections_terminated(stack, csv)
        _worker_killed_in_each_stage(stack, csv)
    _no_run_lost_duplicated_or_stuck(stack)
