"""The embedded default (SQLite WAL + kombu's SQLAlchemy transport) under concurrent processes.

Four producer processes enqueue tasks and write rows at the same time while a worker (2 children)
and beat run: every task must come back and no process may hit 'database is locked'.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from recotem.testing.processes import celery, process_env, recotem, running, wait_until

pytestmark = pytest.mark.integration

PRODUCER = """
import json
from django.contrib.auth.models import User
from recotem.core.tasks import ping
from recotem.projects.models import Project
owner = User.objects.get(username="admin")
results = []
for i in range(40):
    results.append(ping.delay())
    if i % 2 == 0:
        Project.objects.create(owner=owner, name=f"p-{NAME}-{i}", user_column="u", item_column="i")
print(json.dumps(sum(1 for r in results if r.get(timeout=180)["pong"])))
"""


def test_it_survives_concurrent_producers_worker_and_beat(tmp_path: Path) -> None:
    env = process_env(tmp_path / "data", RECOTEM_ADMIN_PASSWORD="admin-pass-123")
    subprocess.run(recotem("migrate"), env=env, check=True, capture_output=True, timeout=180)
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    with (
        running(celery("worker", "-l", "INFO", "--concurrency", "2"), env, worker_log),
        running(
            celery(
                "beat",
                "-l",
                "INFO",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
            ),
            env,
            beat_log,
        ),
    ):
        wait_until(
            lambda: "ready" in worker_log.read_text(errors="replace"), 60, message="worker ready"
        )
        producers = [
            subprocess.Popen(
                recotem("manage", "shell", "-c", PRODUCER.replace("NAME", str(n))),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(4)
        ]
        outputs = [p.communicate(timeout=300) for p in producers]
    for (out, err), producer in zip(outputs, producers, strict=True):
        assert producer.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == "40"
        assert "database is locked" not in err
    for log in (worker_log, beat_log):
        text = log.read_text(errors="replace")
        assert "database is locked" not in text and "OperationalError" not in text, text[-3000:]
    projects = subprocess.run(
        recotem(
            "manage",
            "shell",
            "-c",
            "from recotem.projects.models import Project; print(Project.objects.count())",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert projects.stdout.strip().splitlines()[-1] == "80"
