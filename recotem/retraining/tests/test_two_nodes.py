"""Two machines sharing only PostgreSQL, Redis and an S3 endpoint (DESIGN.md §6).

Node A runs web + worker + beat, node B runs web + worker + `recotem inference`; each has its own
RECOTEM_DATA_DIR and no disk in common. Real processes, a real S3 API server (moto_server):

1. an upload through A trains on whichever worker takes it, is deployed, and B's inference
   serves it;
2. a retraining run triggered through B deploys, and A's inference (A's web mounts /inference/)
   swaps to it within 5 s;
3. node A's worker is SIGKILLed mid-training: the reaper fails the run and B's worker finishes
   the retry;
4. no artifact or upload is on either node's disk outside its cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from conftest import require
from recotem.testing.processes import (
    S3_TEST_CREDENTIALS,
    celery,
    descendants,
    free_port,
    fresh_postgres_database,
    postgres_available,
    process_env,
    recotem,
    running,
    s3_bucket,
    s3_keys,
    wait_http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration
PASSWORD = "admin-password-1"


class Node:
    def __init__(self, name: str, data_dir: Path, env: dict[str, str], web_port: int) -> None:
        self.name = name
        self.data_dir = data_dir
        self.env = env
        self.base = f"http://127.0.0.1:{web_port}"
        self.worker: subprocess.Popen[bytes] | None = None

    def worker_pids(self) -> set[int]:
        assert self.worker is not None
        return {self.worker.pid, *descendants(self.worker.pid)}


@pytest.fixture
def shared(redis_url: str, s3_endpoint: str) -> Iterator[dict[str, str]]:
    require(postgres_available(), "PostgreSQL is needed (the database both nodes share)")
    with fresh_postgres_database("recotem_2n") as db_url:
        yield {
            "DATABASE_URL": db_url,
            "CELERY_BROKER_URL": redis_url,
            "RECOTEM_STORAGE": "s3",
            "RECOTEM_S3_ENDPOINT_URL": s3_endpoint,
            "RECOTEM_S3_BUCKET": s3_bucket(s3_endpoint, "recotem-2n"),
            "RECOTEM_S3_PREFIX": "prod",
            **S3_TEST_CREDENTIALS,
            "SECRET_KEY": "two-nodes-" + "k" * 40,  # every node must agree on it
            "RECOTEM_ADMIN_USERNAME": "admin",
            "RECOTEM_ADMIN_PASSWORD": PASSWORD,
            "RECOTEM_RUN_STALE_SECONDS": "8",
            "RECOTEM_REAPER_SECONDS": "3",
            "RECOTEM_RUN_HEARTBEAT_SECONDS": "2",
        }


def _login(base: str) -> httpx.Client:
    token = httpx.post(
        f"{base}/api/v1/auth/login/", json={"username": "admin", "password": PASSWORD}
    ).json()["access"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _control(node: Node, *args: str) -> None:
    """Celery remote control through the shared broker (as an operator would type it)."""
    done = subprocess.run(
        celery("control", *args), env=node.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_nodes_share_only_database_broker_and_bucket(
    shared: dict[str, str], tmp_path: Path, ml100k_df: pd.DataFrame
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    a = Node("A", tmp_path / "node-a", process_env(tmp_path / "node-a", **shared), free_port())
    b = Node("B", tmp_path / "node-b", process_env(tmp_path / "node-b", **shared), free_port())
    inference_b = f"http://127.0.0.1:{free_port()}"
    subprocess.run(recotem("migrate"), env=a.env, check=True, capture_output=True, timeout=180)
    small, full = tmp_path / "small.csv", tmp_path / "full.csv"
    ml100k_df[ml100k_df.user_id <= 300].to_csv(small, index=False)
    ml100k_df.to_csv(full, index=False)

    with ExitStack() as stack:

        def run(node: Node, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
            return stack.enter_context(running(cmd, node.env, logs / f"{node.name}-{name}.log"))

        for node in (a, b):
            run(node, "web", recotem("web", "--port", node.base.rsplit(":", 1)[1]))
            node.worker = run(
                node,
                "worker",
                recotem(
                    "worker",
                    *("--concurrency", "1", "-Q", "celery,retraining,tuning"),
                    *("--hostname", _hostname(node)),
                ),
            )
        run(a, "beat", recotem("beat"))
        run(b, "inference", recotem("inference", "--port", inference_b.rsplit(":", 1)[1]))
        for url in (f"{a.base}/api/v1/ping/", f"{b.base}/api/v1/ping/", f"{inference_b}/health"):
            wait_http_ok(url, timeout=120)
        api_a, api_b = stack.enter_context(_login(a.base)), stack.enter_context(_login(b.base))
        try:
            _scenarios(a, b, api_a, api_b, inference_b, small, full)
        except BaseException:
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name}\n" + log.read_text(errors="replace")[-4000:])
            raise

    # Nothing but the cache on either node's disk: artifacts and uploads are in the bucket.
    for node in (a, b):
        stray = [
            p
            for p in node.data_dir.rglob("*")
            if p.is_file() and "cache" not in p.relative_to(node.data_dir).parts
        ]
        assert stray == [], (node.name, stray)
    keys = s3_keys(shared["RECOTEM_S3_ENDPOINT_URL"], shared["RECOTEM_S3_BUCKET"])
    assert any(k.endswith(".rctm") for k in keys) and any(k.endswith(".csv") for k in keys)
    assert all(k.startswith("prod/") for k in keys)
    assert any((b.data_dir / "cache").iterdir())  # B's inference read its artifact from there


def _project(
    api: httpx.Client, name: str, csv: Path, cls: str, params: dict[str, Any]
) -> tuple[int, int, int]:
    pid = api.post(
        "/api/v1/project/",
        json={
            "name": name,
            "user_column": "user_id",
            "item_column": "item_id",
            "time_column": "timestamp",
        },
    ).json()["id"]
    with open(csv, "rb") as fh:
        r = api.post(
            "/api/v1/training_data/", data={"project": pid}, files={"file": (csv.name, fh)}
        )
    assert r.status_code == 201, r.text
    data_id = r.json()["id"]
    r = api.post(
        "/api/v1/model_configuration/",
        json={
            "project": pid,
            "name": cls,
            "recommender_class_name": cls,
            "parameters_json": params,
        },
    )
    assert r.status_code == 201, r.text
    return pid, data_id, r.json()["id"]


def _served_within(url: str, project_id: int, key: str, model_id: int, seconds: float) -> float:
    began = time.monotonic()

    def served() -> bool:
        r = httpx.post(
            f"{url}/predict/project/{project_id}",
            json={"user_id": "1", "cutoff": 5},
            headers={"X-API-Key": key},
            timeout=10,
        )
        return r.status_code == 200 and r.json()["model_id"] == model_id

    wait_until(served, seconds, interval=0.2, message=f"{url} serving model {model_id}")
    return time.monotonic() - began


def _run(api: httpx.Client, run_id: int) -> dict[str, Any]:
    return api.get(f"/api/v1/retraining_run/{run_id}/").json()


def _scenarios(
    a: Node,
    b: Node,
    api_a: httpx.Client,
    api_b: httpx.Client,
    inference_b: str,
    small: Path,
    full: Path,
) -> None:
    # 1. Upload through A; whichever worker takes the training; deploy; B's inference serves it.
    pid, data_id, cfg = _project(api_a, "shop", small, "RP3betaRecommender", {})
    r = api_a.post("/api/v1/trained_model/", json={"configuration": cfg, "data_loc": data_id})
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]

    def completed() -> bool:
        status = api_a.get(f"/api/v1/trained_model/{model_id}/").json()["status"]
        assert status != "FAILED"
        return status == "COMPLETED"

    wait_until(completed, 90, message="the first training")
    r = api_a.post(
        "/api/v1/deployment_slot/",
        json={"project": pid, "name": "main", "trained_model": model_id, "weight": 100},
    )
    assert r.status_code == 201, r.text
    key = api_a.post(
        "/api/v1/api_keys/", json={"project": pid, "name": "app", "scopes": ["predict"]}
    ).json()["key"]
    _served_within(inference_b, pid, key, model_id, seconds=15)

    # 2. A retraining run triggered through B deploys; A's /inference/ swaps within 5 s.
    _served_within(f"{a.base}/inference", pid, key, model_id, seconds=15)
    r = api_b.post(
        "/api/v1/retraining_schedule/",
        json={
            "project": pid,
            "model_configuration": cfg,
            "cron_expression": "0 3 * * *",
            "is_enabled": False,
            "auto_deploy": True,
        },
    )
    assert r.status_code == 201, r.text
    run_id = api_b.post(f"/api/v1/retraining_schedule/{r.json()['id']}/trigger/", json={}).json()[
        "run_id"
    ]
    done = wait_until(
        lambda: (x := _run(api_b, run_id))["status"] not in ("PENDING", "RUNNING") and x,
        120,
        interval=0.2,
        message="the triggered run",
    )
    assert done["status"] == "COMPLETED" and done["gate_decision"] == "deployed", done
    assert done["trained_model"] != model_id
    swap = _served_within(f"{a.base}/inference", pid, key, done["trained_model"], seconds=5)
    _served_within(inference_b, pid, key, done["trained_model"], seconds=5)
    print(f"A's inference swapped {swap:.2f} s after the run completed")

    # 3. A long training on node A's worker (B's worker stops taking retraining work meanwhile);
    # SIGKILL A's worker mid-training; the reaper fails the run and B's worker does the retry.
    _control(b, "cancel_consumer", "retraining", "-d", _hostname(b))
    pid_f, _, cfg_f = _project(
        api_a, "big", full, "IALSRecommender", {"n_components": 300, "train_epochs": 400}
    )
    r = api_a.post(
        "/api/v1/retraining_schedule/",
        json={
            "project": pid_f,
            "model_configuration": cfg_f,
            "cron_expression": "0 3 * * *",
            "is_enabled": False,
            "max_retries": 1,
            "retry_backoff_seconds": 1,
        },
    )
    assert r.status_code == 201, r.text
    sched_f = r.json()["id"]
    run_f = api_a.post(f"/api/v1/retraining_schedule/{sched_f}/trigger/", json={}).json()["run_id"]
    training = wait_until(
        lambda: (x := _run(api_a, run_f))["status"] == "RUNNING" and x["trained_model"] and x,
        90,
        message="the long training",
    )
    time.sleep(2)
    assert int(training["worker"].rsplit(":", 1)[1]) in a.worker_pids()
    assert a.worker is not None
    os.killpg(a.worker.pid, signal.SIGKILL)  # the whole worker: main process and pool
    r = api_a.post(
        "/api/v1/model_configuration/",
        json={
            "project": pid_f,
            "name": "fast",
            "recommender_class_name": "TopPopRecommender",
            "parameters_json": {},
        },
    )
    api_a.patch(
        f"/api/v1/retraining_schedule/{sched_f}/", json={"model_configuration": r.json()["id"]}
    )
    _control(b, "add_consumer", "retraining", "-d", _hostname(b))

    def retried() -> list[dict[str, Any]] | None:
        runs = api_a.get(f"/api/v1/retraining_run/?schedule={sched_f}").json()["results"]
        return runs if any(x["status"] == "COMPLETED" for x in runs) else None

    runs_f = wait_until(retried, 90, message="the retry on node B")
    killed = next(x for x in runs_f if x["id"] == run_f)
    assert killed["status"] == "FAILED" and killed["error_message"].startswith("worker lost"), (
        killed
    )
    retry = next(x for x in runs_f if x["retry_of"] == run_f)
    assert retry["status"] == "COMPLETED" and retry["attempt"] == 2, retry
    assert int(retry["worker"].rsplit(":", 1)[1]) in b.worker_pids()


def _hostname(node: Node) -> str:
    """The Celery node name of a node's worker (both "machines" are this host)."""
    import socket

    return f"node{node.name.lower()}@{socket.gethostname()}"
