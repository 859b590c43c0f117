"""The run pipeline in-process, with real data, real training and real slots (no broker)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recotem.deployment.models import DeploymentSlot
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import services
from recotem.retraining.models import RetrainingRun
from recotem.retraining.runner import run_execute
from recotem.tuning.models import ModelConfiguration


@pytest.fixture
def ials(project: Project) -> ModelConfiguration:
    return ModelConfiguration.objects.create(
        project=project, name="ials", recommender_class_name="IALSRecommender",
        parameters_json={"n_components": 32, "train_epochs": 8},
    )


def _run(schedule: Any, force: bool = False) -> RetrainingRun:
    run = services.run_trigger(schedule=schedule, trigger="manual", force=force)
    result = run_execute(run_id=run.pk)
    assert result is not None
    return result


def test_it_trains_skips_unchanged_data_and_deploys_into_one_slot(
    project: Project, ml100k_csv: Path, ials: ModelConfiguration, config: ModelConfiguration
) -> None:
    training_data_create_from_frame_file(project=project, path=ml100k_csv, name="ml100k.csv")
    schedule = services.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=config, auto_deploy=True
    )
    first = _run(schedule)
    assert first.status == "COMPLETED", first.error_message
    assert first.gate_decision == "deployed" and first.trained_model is not None
    slot = DeploymentSlot.objects.get(project=project)
    assert (slot.name, slot.weight, slot.trained_model_id) == ("auto-deploy", 100, first.trained_model_id)
    assert first.data_rows == TrainingData.objects.get().row_count and first.data_fingerprint.startswith("sha256:")
    assert "ndcg" in first.metrics

    second = _run(schedule)
    assert second.status == "SKIPPED" and f"run #{first.pk}" in second.skip_reason

    # Same configuration, forced: gate compares the stored test metrics, slot keeps its weight.
    DeploymentSlot.objects.filter(pk=slot.pk).update(weight=70)
    third = _run(schedule, force=True)
    assert third.status == "COMPLETED", third.error_message
    assert third.metrics["gate_method"].startswith("same configuration")
    assert third.gate_decision == "deployed"
    slot.refresh_from_db()
    assert slot.trained_model_id == third.trained_model_id and slot.weight == 70
    assert DeploymentSlot.objects.filter(project=project).count() == 1

    # A different, worse configuration (a badly set IALS vs TopPop on ml-100k: ndcg@10 < 0.05 vs
    # 0.15) is refitted on the same holdout as the incumbent's and rejected.
    schedule.model_configuration = ials
    schedule.save()
    fourth = _run(schedule, force=True)
    assert fourth.status == "COMPLETED", fourth.error_message
    assert fourth.metrics["gate_method"].startswith("both configurations refitted")
    assert fourth.incumbent_metrics["model_id"] == third.trained_model_id
    assert fourth.gate_decision == "rejected"
    assert fourth.metrics["gate_score"] < fourth.incumbent_metrics["gate_score"]
    slot.refresh_from_db()
    assert slot.trained_model_id == third.trained_model_id


def test_a_run_without_data_fails_without_retry(project: Project, ials: ModelConfiguration) -> None:
    schedule = services.schedule_create(project=project, cron_expression="0 3 * * *", model_configuration=ials)
    run = _run(schedule)
    assert run.status == "FAILED" and "no training data" in run.error_message and not run.retryable
    assert not RetrainingRun.objects.filter(retry_of=run).exists()


def test_a_sqlite_source_gives_a_new_snapshot_only_when_it_changes(
    project: Project, ials: ModelConfiguration, tmp_path: Path, settings: Any
) -> None:
    db = tmp_path / "src" / "events.db"
    db.parent.mkdir()
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = [f"sqlite:{db.parent}"]
    rows = [(u, i, 1_600_000_000 + u * 50 + i) for u in range(1, 31) for i in range(1, 16) if (u + i) % 3]
    with sqlite3.connect(db) as conn:
        pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_sql("events", conn, index=False)
    DataSource.objects.create(project=project, kind="sql", url=f"sqlite:///{db}", query="SELECT * FROM events")
    schedule = services.schedule_create(project=project, cron_expression="0 3 * * *", model_configuration=ials)
    first = _run(schedule)
    assert first.status == "COMPLETED", first.error_message
    assert _run(schedule).status == "SKIPPED"
    assert TrainingData.objects.count() == 1
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO events VALUES (31, 1, 1700000000), (31, 2, 1700000001)")
    third = _run(schedule)
    assert third.status == "COMPLETED", third.error_message
    assert TrainingData.objects.count() == 2 and third.data_rows == first.data_rows + 2
    assert TrainingData.objects.first().data_source_id == DataSource.objects.get().pk


def test_a_source_host_not_allowed_is_refused_on_save(
    alice_client: Any, project: Project, settings: Any
) -> None:
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = []
    response = alice_client.post("/api/v1/data_source/", {
        "project": project.pk, "kind": "url", "url": "http://10.0.0.5/data.csv",
    }, format="json")
    assert response.status_code == 400 and "url" in response.json()
    from django.conf import settings as dj

    response = alice_client.post("/api/v1/data_source/", {
        "project": project.pk, "kind": "sql", "url": f"sqlite:///{dj.DATABASES['default']['NAME']}",
        "query": "SELECT 1",
    }, format="json")
    assert response.status_code == 400 and "url" in response.json()
