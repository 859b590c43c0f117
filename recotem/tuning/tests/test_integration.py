"""End to end with real processes: a live web server, real Celery workers, a real broker.

Embedded default (SQLite + SQLAlchemy broker), and PostgreSQL + Redis (required in CI through
RECOTEM_REQUIRE_SERVICES=1), including two workers sharing one study.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from conftest import ML100K, require
from recotem.testing import processes
from recotem.testing.stack import Stack, stack_env

pytestmark = pytest.mark.integration

# Each test builds its own stack (fresh data dir; a fresh PostgreSQL database where needed), so
# integration tests ignore the outer DATABASE_URL and run once, in `make test-sqlite`.

PG_ADMIN_URL = os.environ.get("RECOTEM_IT_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Stack] = []

    def make(
        *, database_url: str | None = None, broker_url: str | None = None, workers: int = 1
    ) -> Stack:
        data_dir = tmp_path / f"stack{len(made)}"
        env = stack_env(
            data_dir,
            SECRET_KEY=secrets.token_urlsafe(40),
            DJANGO_SETTINGS_MODULE="recotem.settings",
        )
        if database_url:
            env["DATABASE_URL"] = database_url
        if broker_url:
            env["CELERY_BROKER_URL"] = broker_url
        port = processes.free_port()
        stack = Stack(data_dir, env, web=f"http://127.0.0.1:{port}")
        made.append(stack)
        subprocess.run(processes.recotem("migrate"), env=env, check=True, capture_output=True)
        web = stack.start(
            "web", processes.recotem("web", "--host", "127.0.0.1", "--port", str(port))
        )
        for i in range(workers):
            stack.start(
                f"worker{i}",
                processes.celery(
                    "worker",
                    "-l",
                    "INFO",
                    "-c",
                    "1",
                    "-Q",
                    "celery,tuning,retraining",
                    "-n",
                    f"w{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ),
            )
        try:
            processes.wait_http_ok(f"{stack.web}/api/v1/ping/", timeout=60, proc=web)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{stack.logs()}")
        stack.api()  # logged in once, before the test needs it
        return stack

    yield make
    for stack in made:
        stack.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    require(processes.postgres_available(PG_ADMIN_URL), f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    with processes.fresh_postgres_database(admin=PG_ADMIN_URL) as url:
        yield url


def _wait(client: httpx.Client, url: str, stack: Stack, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    seen_progress: set[int] = set()
    while True:
        body = client.get(url).json()
        if "progress" in body:
            seen_progress.add(body["progress"]["trials_done"])
        if body["status"] in ("COMPLETED", "FAILED"):
            body["_seen_progress"] = sorted(seen_progress)
            return body
        assert time.time() < deadline, f"still {body['status']} after {timeout}s\n{stack.logs()}"
        time.sleep(0.5)


def _prepare(client: httpx.Client) -> dict[str, int]:
    require(ML100K.exists(), f"MovieLens-100k not found at {ML100K}")
    project = client.post(
        "/project/",
        json={
            "name": "ml100k",
            "user_column": "user_id",
            "item_column": "item_id",
            "time_column": "timestamp",
        },
    ).json()
    df = pd.read_csv(
        ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )
    data = client.post(
        "/training_data/",
        data={"project": project["id"]},
        files={"file": ("ml100k.csv", df.to_csv(index=False).encode())},
    )
    assert data.status_code == 201, data.text
    split = client.post("/split_config/", json={"project": project["id"], "scheme": "RG"}).json()
    evaluation = client.post(
        "/evaluation_config/",
        json={"project": project["id"], "cutoff": 10, "target_metric": "ndcg"},
    ).json()
    return {
        "project": project["id"],
        "data": data.json()["id"],
        "split": split["id"],
        "evaluation": evaluation["id"],
    }


def _check_tuning_and_serving(stack: Stack, n_tasks_parallel: int = 1) -> dict[str, Any]:
    client = stack.api()
    ids = _prepare(client)
    r = client.post(
        "/parameter_tuning_job/",
        json={
            "data": ids["data"],
            "split": ids["split"],
            "evaluation": ids["evaluation"],
            "n_trials": 6,
            "n_tasks_parallel": n_tasks_parallel,
        },
    )
    assert r.status_code == 201, r.text
    job = _wait(client, f"/parameter_tuning_job/{r.json()['id']}/", stack)
    assert job["status"] == "COMPLETED", f"{job['error']}\n{stack.logs()}"
    assert job["progress"] == {"trials_done": 6, "trials_total": 6, "best_score": job["best_score"]}
    assert 0.0 < job["best_score"] <= 1.0
    assert (
        set(job["test_metrics"]) >= {"ndcg@10", "map@10", "recall@10", "hit@10"}
        and job["test_metrics"]["ndcg@10"] > 0.1
    )
    trials = client.get(f"/parameter_tuning_job/{job['id']}/trials/").json()
    assert len(trials) == 6 and {t["algorithm"] for t in trials} >= {
        "TopPopRecommender",
        "IALSRecommender",
    }
    assert max(t["score"] or 0 for t in trials) == pytest.approx(job["best_score"])
    config = client.get(f"/model_configuration/{job['best_config']}/").json()
    assert config["tuning_job"] == job["id"]
    model = client.get(f"/trained_model/{job['tuned_model']}/").json()
    assert model["status"] == "COMPLETED" and model["configuration"] == job["best_config"]
    assert model["test_metrics"] == job["test_metrics"] and model["filesize"] > 0

    rec = client.get(
        f"/trained_model/{model['id']}/sample_recommendation/",
        params={"user_id": "1", "cutoff": 10},
    )
    assert rec.status_code == 200, rec.text
    df = pd.read_csv(
        ML100K,
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype=str,
    )
    rated = set(df[df.user_id == "1"].item_id)
    items = [i["item_id"] for i in rec.json()["items"]]
    assert rec.json()["user_id"] == "1" and len(items) == len(set(items)) == 10
    assert not set(items) & rated
    assert (
        client.get(
            f"/trained_model/{model['id']}/sample_recommendation/",
            params={"user_id": "no-such-user"},
        ).status_code
        == 404
    )
    download = client.get(f"/trained_model/{model['id']}/download/")
    assert download.status_code == 200 and len(download.content) == model["filesize"]
    assert download.content.startswith(b"RCTMMDL")
    logs = client.get("/task_log/", params={"tuning_job": job["id"]}).json()
    assert logs["count"] >= 2
    return {"ids": ids, "job": job, "model": model, "logs": logs}


def _check_manual_training_and_tampering(stack: Stack, ids: dict[str, int], config_id: int) -> None:
    client = stack.api()
    r = client.post("/trained_model/", json={"configuration": config_id, "data_loc": ids["data"]})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "PENDING" and r.json()["project"] == ids["project"]
    model = _wait(client, f"/trained_model/{r.json()['id']}/", stack)
    assert model["status"] == "COMPLETED", f"{model['error']}\n{stack.logs()}"
    # A plain training is servable once its fit is stored; the holdout metrics follow.
    deadline = time.time() + 120
    while not model["test_metrics"] and time.time() < deadline:
        time.sleep(0.5)
        model = client.get(f"/trained_model/{model['id']}/").json()
    assert set(model["test_metrics"]) >= {"ndcg@10"} and model["irspack_version"] == "0.5.2"
    # Flip one byte of the stored artifact before the web process ever loaded it.
    stored = next((stack.data_dir / "media").rglob(f"model-{model['id']}*"))
    payload = bytearray(stored.read_bytes())
    payload[len(payload) // 2] ^= 0x01
    stored.write_bytes(bytes(payload))
    refused = client.get(
        f"/trained_model/{model['id']}/sample_recommendation/", params={"user_id": "1"}
    )
    assert refused.status_code == 409, refused.text
    assert "signature" in refused.json()["file"][0]


def test_it_tunes_trains_and_serves_on_the_embedded_default(stack_factory: Any) -> None:
    stack = stack_factory()
    result = _check_tuning_and_serving(stack)
    assert (stack.data_dir / "db.sqlite3").exists() and (stack.data_dir / "broker.sqlite3").exists()
    _check_manual_training_and_tampering(stack, result["ids"], result["job"]["best_config"])


def test_it_tunes_trains_and_serves_on_postgres_and_redis(
    stack_factory: Any, postgres_url: str, redis_url: str
) -> None:
    stack = stack_factory(database_url=postgres_url, broker_url=redis_url)
    result = _check_tuning_and_serving(stack)
    _check_manual_training_and_tampering(stack, result["ids"], result["job"]["best_config"])


def test_it_shares_one_study_between_two_workers_on_postgres(
    stack_factory: Any, postgres_url: str, redis_url: str
) -> None:
    stack = stack_factory(database_url=postgres_url, broker_url=redis_url, workers=2)
    result = _check_tuning_and_serving(stack, n_tasks_parallel=2)
    finished = [
        entry["contents"]
        for entry in result["logs"]["results"]
        if entry["contents"].startswith("Tuning task ")
    ]
    pids = {text.split("pid ")[1].split(")")[0] for text in finished}
    assert len(finished) == 2 and len(pids) == 2, finished
