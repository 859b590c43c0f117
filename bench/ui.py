"""Web UI page times with 1,000 runs in the retraining history (goal: every page < 300 ms)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from recotem.testing.processes import free_port, process_env, recotem, running, wait_http_ok  # noqa: E402

SETUP = """
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.utils import timezone
from recotem.projects.models import Project, TrainingData
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.tuning.models import ModelConfiguration
owner = User.objects.get(username="admin")
project = Project.objects.create(owner=owner, name="bench", user_column="user_id", item_column="item_id")
td = TrainingData(project=project, original_name="d.csv", filesize=1, row_count=1, n_users=1, n_items=1, fingerprint="x")
td.file.save("d.csv", ContentFile(b"user_id,item_id\\n1,2\\n"), save=True)
config = ModelConfiguration.objects.create(project=project, name="c", recommender_class_name="TopPopRecommender")
schedule = RetrainingSchedule.objects.create(project=project, cron_expression="0 2 * * *", model_configuration=config)
now = timezone.now()
RetrainingRun.objects.bulk_create(
    RetrainingRun(schedule=schedule, trigger="schedule", status="COMPLETED", started_at=now, completed_at=now,
                  metrics={"ndcg": 0.3 + i / 10000, "gate_score": 0.3}) for i in range(1000))
print(project.pk)
"""

PAGES = [
    "",
    "data/",
    "tuning/",
    "models/",
    "deployment/",
    "retraining/",
    "retraining/runs/?page=25",
    "keys/",
]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="recotem-bench-ui-"))
    env = process_env(tmp / "data", RECOTEM_ADMIN_PASSWORD="bench-pass-123")
    subprocess.run(recotem("migrate"), env=env, check=True, capture_output=True)
    out = subprocess.run(
        recotem("manage", "shell", "-c", SETUP), env=env, check=True, capture_output=True, text=True
    )
    project_id = int(out.stdout.strip().splitlines()[-1])
    port = free_port()
    with running(recotem("web", "--port", str(port)), env, tmp / "web.log") as web:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/api/v1/ping/", proc=web)
        with httpx.Client(base_url=base, timeout=30) as client:
            client.get("/login/")
            client.post(
                "/login/",
                data={
                    "username": "admin",
                    "password": "bench-pass-123",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
                headers={"Referer": f"{base}/login/"},
            )
            rows = []
            for page in PAGES:
                url = f"/projects/{project_id}/{page}"
                assert client.get(url).status_code == 200, url  # warm-up
                times = []
                for _ in range(20):
                    start = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - start) * 1000)
                    assert response.status_code == 200
                rows.append((url, statistics.median(times), max(times)))
    print("### Web UI page times (`bench/ui.py`): 1,000 runs in the history, 20 requests each\n")
    print("| page | median ms | max ms | goal |\n|---|---|---|---|")
    for url, median, worst in rows:
        print(f"| `{url}` | {median:.0f} | {worst:.0f} | < 300 ms |")


if __name__ == "__main__":
    main()
