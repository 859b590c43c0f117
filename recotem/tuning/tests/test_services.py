from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from recotem.core.exceptions import ApplicationError
from recotem.core.models import TaskLog
from recotem.projects.models import Project, TrainingData
from recotem.projects.services import training_data_create
from recotem.training import services as training_services
from recotem.training.models import ModelConfiguration
from recotem.tuning import services
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

pytestmark = pytest.mark.django_db


def upload(project: Project, csv: Path) -> TrainingData:
    return training_data_create(
        project=project, upload=SimpleUploadedFile(csv.name, csv.read_bytes())
    )


def make_job(project: Project, csv: Path, **kwargs: object) -> ParameterTuningJob:
    return services.tuning_job_create(
        project=project,
        data=upload(project, csv),
        split=SplitConfig.objects.create(project=project, test_user_ratio=0.2, heldout_ratio=0.3),
        evaluation=EvaluationConfig.objects.create(project=project, cutoff=5),
        enqueue=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_it_tunes_trains_and_reports(project: Project, small_csv: Path) -> None:
    job = make_job(project, small_csv, n_trials=3, tried_algorithms=["IALS", "TopPop"])
    job = services.tuning_job_run(job_id=job.pk)
    assert job.status == "COMPLETED", job.error
    trials = list(job.trials.order_by("number"))
    assert len(trials) == 3 == job.trials_done
    assert {t.algorithm for t in trials} == {"IALSRecommender", "TopPopRecommender"}
    assert all(t.state in {"COMPLETE", "PRUNED", "FAIL"} and t.duration is not None for t in trials)
    best = max(t.score for t in trials if t.score is not None)
    assert job.best_score == pytest.approx(best)
    assert job.best_config is not None and job.best_config.tuning_job_id == job.pk
    assert job.best_config.recommender_class_name in {"IALSRecommender", "TopPopRecommender"}
    cutoff = job.evaluation.cutoff  # every metric names its cutoff
    assert set(job.test_metrics) >= {f"{m}@{cutoff}" for m in ("ndcg", "map", "recall", "hit")}
    model = job.tuned_model
    assert model is not None and model.status == "COMPLETED"
    assert model.configuration_id == job.best_config_id
    assert model.test_metrics == job.test_metrics  # the tuning split's honest score, not a new one
    df = pd.read_csv(small_csv, dtype=str)
    seen = set(df[df.user_id == "2"].item_id)
    items = training_services.sample_recommendation(trained_model=model, user_id="2", cutoff=3)[
        "items"
    ]
    assert len(items) == 3 and not {i["item_id"] for i in items} & seen
    assert TaskLog.objects.filter(tuning_job_id=job.pk, contents__contains="completed").exists()


def test_it_fails_readably_when_the_time_runs_out_before_any_trial(
    project: Project, small_csv: Path
) -> None:
    job = make_job(
        project,
        small_csv,
        n_trials=3,
        tried_algorithms=["IALS"],
        timeout_overall=5,
        train_after_tuning=False,
    )
    assert services.tuning_job_start(job_id=job.pk)
    ParameterTuningJob.objects.filter(pk=job.pk).update(
        started_at=timezone.now() - timedelta(seconds=60)
    )
    services.tuning_job_run_trials(job_id=job.pk)
    job = services.tuning_job_finish(job_id=job.pk)
    assert job.status == "FAILED"
    assert "no tuning trial completed" in job.error
    assert job.best_config is None and job.tuned_model is None


def test_it_keeps_the_best_so_far_when_the_time_runs_out(
    project: Project, ml100k_csv: Path
) -> None:
    job = make_job(
        project,
        ml100k_csv,
        n_trials=500,
        tried_algorithms=["RP3beta", "TopPop"],
        timeout_overall=3,
        train_after_tuning=False,
    )
    job = services.tuning_job_run(job_id=job.pk)
    assert job.status == "COMPLETED", job.error
    assert 2 <= job.trials_done < 500
    assert job.best_config is not None and job.tuned_model is None


def test_it_fails_a_job_whose_data_cannot_be_split(project: Project, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("user_id,item_id,timestamp\n1,1,1\n2,2,2\n3,1,3\n")
    job = make_job(project, tiny, n_trials=2)
    job = services.tuning_job_run(job_id=job.pk)
    assert job.status == "FAILED"
    assert job.error and "Traceback" not in job.error


def test_it_validates_jobs_created_from_code(
    project: Project, alice: object, small_csv: Path
) -> None:
    other = Project.objects.create(owner=alice, name="other", user_column="u", item_column="i")
    with pytest.raises(ApplicationError) as info:
        make_job(
            project,
            small_csv,
            warm_start_config=ModelConfiguration.objects.create(
                project=other, name="c", recommender_class_name="TopPopRecommender"
            ),
        )
    assert info.value.field == "warm_start_config"
    with pytest.raises(ApplicationError) as info:
        make_job(project, small_csv, tried_algorithms=["Bogus"])
    assert info.value.field == "tried_algorithms"


def test_it_uses_a_process_safe_study_storage_on_sqlite(
    project: Project, small_csv: Path, settings: object
) -> None:
    job = make_job(project, small_csv)
    storage = services.study_storage(job)
    assert type(storage).__name__ == ("RDBStorage" if not settings.IS_SQLITE else "JournalStorage")  # type: ignore[attr-defined]


def test_it_fails_only_unfinished_jobs_from_the_chord_errback(
    project: Project, small_csv: Path
) -> None:
    job = make_job(project, small_csv)
    services.tuning_job_fail(
        job_id=job.pk, message="A parallel tuning task failed; see the task log."
    )
    job.refresh_from_db()
    assert job.status == "FAILED" and "parallel" in job.error
    ParameterTuningJob.objects.filter(pk=job.pk).update(status="COMPLETED", error="")
    services.tuning_job_fail(job_id=job.pk, message="late")
    job.refresh_from_db()
    assert job.status == "COMPLETED" and job.error == ""


def test_a_duplicate_start_message_does_not_restart_a_running_job(
    project: Project, small_csv: Path
) -> None:
    job = make_job(project, small_csv, n_trials=2, tried_algorithms=["TopPopRecommender"])
    assert services.tuning_job_start(job_id=job.pk)
    # A second delivery of the message (acks_late redelivery) finds the job RUNNING: no work.
    assert not services.tuning_job_start(job_id=job.pk)
    assert TaskLog.objects.filter(tuning_job_id=job.pk, contents__startswith="Tuning ").count() == 1


def test_a_duplicate_finish_callback_cannot_create_a_second_configuration_or_model(
    project: Project, small_csv: Path
) -> None:
    from django.db.models.signals import post_save

    from recotem.training.models import TrainedModel

    job = make_job(
        project, small_csv, n_trials=3, tried_algorithms=["TopPopRecommender", "RP3betaRecommender"]
    )
    assert services.tuning_job_start(job_id=job.pk)
    services.tuning_job_run_trials(job_id=job.pk)
    duplicates: list[ParameterTuningJob] = []

    def deliver_again(sender: object, instance: TaskLog, created: bool, **kwargs: object) -> None:
        # The chord callback delivered a second time while the first is still finishing.
        if (
            created
            and instance.tuning_job_id == job.pk
            and instance.contents.startswith("Best: ")
            and not duplicates
        ):
            duplicates.append(services.tuning_job_finish(job_id=job.pk))

    post_save.connect(deliver_again, sender=TaskLog, weak=False)
    try:
        finished = services.tuning_job_finish(job_id=job.pk)
    finally:
        post_save.disconnect(deliver_again, sender=TaskLog)
    assert finished.status == "COMPLETED", finished.error
    assert len(duplicates) == 1 and duplicates[0].status == "RUNNING"
    assert ModelConfiguration.objects.filter(tuning_job_id=job.pk).count() == 1
    assert TrainedModel.objects.filter(project=project).count() == 1
    assert services.tuning_job_finish(job_id=job.pk).tuned_model_id == finished.tuned_model_id


def test_a_tuning_task_keeps_the_job_heartbeat_fresh(
    project: Project, small_csv: Path, settings: object
) -> None:
    job = make_job(project, small_csv, n_trials=2, tried_algorithms=["TopPopRecommender"])
    assert services.tuning_job_start(job_id=job.pk)
    job.refresh_from_db()
    assert job.heartbeat_at is not None and job.heartbeat_at >= job.started_at
    ParameterTuningJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert services.tuning_job_heartbeat(job_id=job.pk)
    job.refresh_from_db()
    assert timezone.now() - job.heartbeat_at < timedelta(seconds=5)
    ParameterTuningJob.objects.filter(pk=job.pk).update(status="FAILED")
    assert not services.tuning_job_heartbeat(job_id=job.pk)
