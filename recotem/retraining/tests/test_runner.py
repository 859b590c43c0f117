"""The run pipeline in-process, with real data, real training and real slots (no broker)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recotem.deployment.models import DeploymentSlot
from recotem.ml.gate import HeldOutScores
from recotem.projects.models import DataSource, Project, TrainingData
from recotem.projects.services import training_data_create_from_frame_file
from recotem.retraining import runs, schedules
from recotem.retraining.models import RetrainingRun
from recotem.retraining.runner import _tuned_test_scores, run_execute
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

# A run beats its heartbeat from a second thread (its own connection), which sees only committed
# rows: inside a test transaction it would find no run and fence itself.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ials(project: Project) -> ModelConfiguration:
    """An IALS that clearly beats TopPop on ml-100k (ndcg@10 about 0.32 against 0.22)."""
    return ModelConfiguration.objects.create(
        project=project,
        name="ials",
        recommender_class_name="IALSRecommender",
        parameters_json={"n_components": 64, "alpha0": 0.01, "reg": 0.01, "train_epochs": 10},
    )


def _run(schedule: Any, force: bool = False) -> RetrainingRun:
    run, queued = runs.run_trigger(schedule=schedule, trigger="manual", force=force)
    assert queued  # the embedded broker is there (nobody consumes it: we execute in-process)
    result = run_execute(run_id=run.pk)
    assert result is not None
    return result


GATE_KEYS = {
    "metric",
    "candidate_score",
    "incumbent_score",
    "ci_low",
    "ci_high",
    "n_eval_users",
    "method",
    "floor",
    "reason",
}


def test_it_deploys_equal_models_every_time_and_rejects_a_worse_one(
    project: Project, ml100k_csv: Path, ials: ModelConfiguration, config: ModelConfiguration
) -> None:
    training_data_create_from_frame_file(project=project, path=ml100k_csv, name="ml100k.csv")
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=ials, auto_deploy=True
    )
    first = _run(schedule)
    assert first.status == "COMPLETED", first.error_message
    assert first.gate_decision == "deployed" and first.trained_model is not None
    assert set(first.gate_report) == GATE_KEYS and first.gate_report["metric"] == "ndcg@10"
    assert first.gate_report["candidate_score"] > first.gate_report["floor"]
    slot = DeploymentSlot.objects.get(project=project)
    assert (slot.name, slot.weight, slot.trained_model_id) == (
        "auto-deploy",
        100,
        first.trained_model_id,
    )
    assert (
        first.data_rows == TrainingData.objects.get().row_count
        and first.data_fingerprint.startswith("sha256:")
    )
    assert "ndcg@10" in first.metrics and "ndcg" not in first.metrics
    assert set(first.timings) >= {"read", "train", "gate", "deploy"}
    # The run nests its model's phase timings (issue 13): where the "train" seconds went.
    assert first.trained_model is not None
    assert first.timings["model"] == first.trained_model.timings
    assert set(first.timings["model"]) >= {"read", "matrix", "fit", "save"}
    # Evaluated once: the gate's holdout fit of the candidate gives the model its test
    # metrics, so training fits no holdout of its own (no "evaluate" phase).
    assert "evaluate" not in first.timings["model"]
    assert first.trained_model.test_metrics == first.metrics
    assert first.metrics["ndcg@10"] == pytest.approx(first.gate_report["candidate_score"])

    second = _run(schedule)
    assert second.status == "SKIPPED" and f"run #{first.pk}" in second.skip_reason

    # Three forced runs with the same configuration on the same data: all deploy (the gate
    # passes on configuration and checks only the TopPop floor); the slot keeps its weight.
    DeploymentSlot.objects.filter(pk=slot.pk).update(weight=70)
    for _ in range(3):
        run = _run(schedule, force=True)
        assert run.status == "COMPLETED", run.error_message
        assert run.gate_decision == "deployed", run.gate_report
        assert set(run.gate_report) == GATE_KEYS
        assert run.gate_report["method"].startswith("same configuration")
        assert run.gate_report["ci_low"] is None and run.gate_report["floor"] is not None
        slot.refresh_from_db()
        assert slot.trained_model_id == run.trained_model_id and slot.weight == 70
    assert DeploymentSlot.objects.filter(project=project).count() == 1
    deployed = slot.trained_model_id

    # Switching the schedule to TopPop: refitted on the same holdout as the incumbent's IALS,
    # confidently worse (the whole interval below zero), and it does not beat the floor.
    schedule.model_configuration = config
    schedule.save()
    worse = _run(schedule, force=True)
    assert worse.status == "COMPLETED", worse.error_message
    assert worse.gate_decision == "rejected"
    report = worse.gate_report
    assert report["method"].startswith("paired t") and report["n_eval_users"] > 50
    assert report["ci_high"] < 0 and report["ci_low"] < report["ci_high"]
    assert report["candidate_score"] < report["incumbent_score"]
    assert worse.incumbent_metrics["model_id"] == deployed
    slot.refresh_from_db()
    assert slot.trained_model_id == deployed


def test_a_retune_run_gates_on_the_tuning_jobs_test_scores_without_refitting(
    project: Project, ml100k_csv: Path, split: SplitConfig, evaluation: EvaluationConfig
) -> None:
    training_data_create_from_frame_file(project=project, path=ml100k_csv, name="ml100k.csv")
    schedule = schedules.schedule_create(
        project=project,
        cron_expression="0 3 * * *",
        retune=True,
        split_config=split,
        evaluation_config=evaluation,
        n_trials=2,
        tried_algorithms=["IALSRecommender", "RP3betaRecommender"],
        auto_deploy=True,
    )
    run = _run(schedule)
    assert run.status == "COMPLETED", run.error_message
    job = run.tuning_job
    assert job is not None and job.keep_test_scores
    assert run.trained_model is not None and run.trained_model.configuration == job.best_config
    # The gate decided on the tuning job's per-user test scores of the winner (the same mean
    # as its test score) and says it did not fit the winner again; then they are dropped.
    label = f"{evaluation.target_metric}@{evaluation.cutoff}"
    assert run.gate_report["metric"] == label
    assert run.gate_report["candidate_score"] == pytest.approx(job.test_metrics[label])
    assert "not fitted again" in run.gate_report["reason"], run.gate_report
    assert job.test_scores is None
    assert run.metrics == job.test_metrics == run.trained_model.test_metrics

    # Scores are offered to the gate only for the configuration and data they were made of.
    kept = HeldOutScores("ndcg@10", "sha256:x", np.ones(3))
    ParameterTuningJob.objects.filter(pk=job.pk).update(test_scores=kept.to_bytes())
    data = run.training_data
    assert data is not None
    offered = _tuned_test_scores(job, data, run.trained_model)
    assert offered is not None and offered.holdout == "sha256:x"
    other_configuration = ModelConfiguration.objects.create(
        project=project, name="other", recommender_class_name="TopPopRecommender"
    )
    other = TrainedModel.objects.create(
        project=project, configuration=other_configuration, data_loc=data, status="COMPLETED"
    )
    assert _tuned_test_scores(job, data, other) is None
    newer = training_data_create_from_frame_file(project=project, path=ml100k_csv, name="b.csv")
    assert _tuned_test_scores(job, newer, run.trained_model) is None


def test_a_run_without_data_fails_without_retry(project: Project, ials: ModelConfiguration) -> None:
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=ials
    )
    run = _run(schedule)
    assert run.status == "FAILED" and "no training data" in run.error_message and not run.retryable
    assert not RetrainingRun.objects.filter(retry_of=run).exists()


def test_a_sqlite_source_gives_a_new_snapshot_only_when_it_changes(
    project: Project, ials: ModelConfiguration, tmp_path: Path, settings: Any
) -> None:
    db = tmp_path / "src" / "events.db"
    db.parent.mkdir()
    settings.RECOTEM_ALLOWED_SOURCE_HOSTS = [f"sqlite:{db.parent}"]
    rows = [
        (u, i, 1_600_000_000 + u * 50 + i)
        for u in range(1, 31)
        for i in range(1, 16)
        if (u + i) % 3
    ]
    with sqlite3.connect(db) as conn:
        pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_sql(
            "events", conn, index=False
        )
    DataSource.objects.create(
        project=project, kind="sql", url=f"sqlite:///{db}", query="SELECT * FROM events"
    )
    schedule = schedules.schedule_create(
        project=project, cron_expression="0 3 * * *", model_configuration=ials
    )
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
    response = alice_client.post(
        "/api/v1/data_source/",
        {
            "project": project.pk,
            "kind": "url",
            "url": "http://10.0.0.5/data.csv",
        },
        format="json",
    )
    assert response.status_code == 400 and "url" in response.json()
    from django.conf import settings as dj

    response = alice_client.post(
        "/api/v1/data_source/",
        {
            "project": project.pk,
            "kind": "sql",
            "url": f"sqlite:///{dj.DATABASES['default']['NAME']}",
            "query": "SELECT 1",
        },
        format="json",
    )
    assert response.status_code == 400 and "url" in response.json()
