"""A real Celery worker is SIGKILLed while it trains: the model's heartbeat stops and the reaper
fails it ("worker lost"), instead of leaving it RUNNING forever. Runs on a throw-away SQLite data
dir with the embedded broker (the outer DATABASE_URL is ignored)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ML100K, require
from recotem.testing.processes import celery, process_env, recotem, running, wait_until

pytestmark = pytest.mark.integration

SETUP = """
import django; django.setup()
from django.contrib.auth.models import User
from recotem.projects.models import Project
from recotem.projects.services import training_data_create_from_frame_file
from recotem.training.services import trained_model_create
from recotem.training.models import ModelConfiguration
import pandas as pd, pathlib, sys
csv = pathlib.Path(sys.argv[1])
pd.read_csv(sys.argv[2], sep="\\t", header=None, names=["user_id", "item_id", "r", "timestamp"]).to_csv(csv, index=False)
owner = User.objects.create_user("owner", password="owner-password-1")
project = Project.objects.create(owner=owner, name="p", user_column="user_id", item_column="item_id")
data = training_data_create_from_frame_file(project=project, path=csv, name="ml.csv")
config = ModelConfiguration.objects.create(project=project, name="slow", recommender_class_name="IALSRecommender",
                                           parameters_json={"n_components": 64, "train_epochs": 400})
print(trained_model_create(configuration=config, data=data).pk)
"""

REAP = "import django; django.setup(); from recotem.retraining.reaper import runs_reap; print(runs_reap())"


def _row(db: Path, model_id: int) -> tuple[str, str | None, str]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(
            "SELECT status, heartbeat_at, error FROM training_trainedmodel WHERE id = ?",
            (model_id,),
        ).fetchone()


def test_it_fails_a_model_whose_worker_was_sigkilled(tmp_path: Path) -> None:
    require(ML100K.exists(), f"MovieLens-100k not found at {ML100K}")
    env = process_env(
        tmp_path / "data",
        RECOTEM_RUN_HEARTBEAT_SECONDS="1",
        RECOTEM_RUN_STALE_SECONDS="3",
        DJANGO_SETTINGS_MODULE="recotem.settings",
    )
    subprocess.run(recotem("migrate"), env=env, check=True, timeout=120)
    out = subprocess.run(
        [sys.executable, "-c", SETUP, str(tmp_path / "ml.csv"), str(ML100K)],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    model_id = int(out.stdout.strip().splitlines()[-1])
    db = tmp_path / "data" / "db.sqlite3"
    with running(
        celery("worker", "-P", "solo", "-Q", "celery", "-l", "INFO"), env, tmp_path / "worker.log"
    ) as worker:
        first = wait_until(
            lambda: (r := _row(db, model_id))[0] == "RUNNING" and r[1], 60, 0.2, "model RUNNING"
        )
        # The heartbeat thread keeps touching the row while the fit holds the main thread.
        wait_until(
            lambda: _row(db, model_id)[1] not in (None, first), 10, 0.2, "heartbeat advanced"
        )
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    assert _row(db, model_id)[0] == "RUNNING"  # nobody else would ever end it
    time.sleep(4)  # > RECOTEM_RUN_STALE_SECONDS
    reaped = subprocess.run(
        [sys.executable, "-c", REAP],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert "'models_lost': 1" in reaped.stdout, reaped.stdout + reaped.stderr
    status, _, error = _row(db, model_id)
    assert status == "FAILED" and error.startswith("worker lost (no heartbeat for "), error
