"""Writes for tuning: configurations and parameter tuning jobs.

A job runs in three phases so that several Celery tasks can share one Optuna study:

1. `tuning_job_start`   PENDING -> RUNNING, create the study, score parameter-free algorithms.
2. `tuning_job_run_trials`  (one call per task) run trials until the job's shared budget is
   used up or `timeout_overall` has passed; every finished trial becomes a TuningTrial row.
3. `tuning_job_finish`  pick the best trial, score it on test users, save it as a new
   ModelConfiguration, train it (when `train_after_tuning`), then COMPLETED; or FAILED with
   a readable `error`.

`tuning_job_run` does all three in the calling process. The study lives in the project's
PostgreSQL database (Optuna RDB storage) or, on SQLite, in a journal file under
RECOTEM_DATA_DIR guarded by a file lock: SQLite's single writer plus Optuna's many short
transactions from several processes is what "database is locked" is made of.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.db.models.functions import Now

from recotem.core import jobs
from recotem.core.jobs import Heartbeat, JobStatus, StopWhenEnded, task_log, transition
from recotem.core.ownership import check_same_project
from recotem.ml.catalogue import DEFAULT_ALGORITHMS
from recotem.ml.splitspec import SplitSpec, split_spec_from_config
from recotem.ml.timing import PhaseTimer, describe
from recotem.projects.models import Project, TrainingData
from recotem.projects.selectors import read_training_data
from recotem.training.models import ModelConfiguration
from recotem.training.services import (
    model_configuration_create,
    trained_model_create,
    trained_model_train,
)
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig, TuningTrial
from recotem.tuning.outbox import TUNING_OUTBOX
from recotem.tuning.validation import (
    validate_evaluation_config,
    validate_split_config,
    validate_tuning_job,
)

if TYPE_CHECKING:
    import optuna

    from recotem.ml.evaluation import EvalSpec
    from recotem.ml.split import SplitData
    from recotem.ml.tuning import TrialRecord, TuningSpec

logger = logging.getLogger(__name__)

# --- configurations ---------------------------------------------------------------------------


def split_spec_of(split: SplitConfig | None) -> SplitSpec:
    """The engine split of a split config (the one mapping: `split_spec_from_config`); the
    default split config's when there is none."""
    return split_spec_from_config(**(split.settings if split is not None else {}))


def eval_spec_of(evaluation: EvaluationConfig | None) -> EvalSpec:
    """The engine evaluation of an evaluation config (ndcg@10 when there is none)."""
    from recotem.ml.evaluation import EvalSpec

    if evaluation is None:
        return EvalSpec()
    return EvalSpec(cutoff=evaluation.cutoff, target_metric=evaluation.target_metric)  # type: ignore[arg-type]


# --- jobs -------------------------------------------------------------------------------------


def tuning_job_create(
    *,
    project: Project,
    data: TrainingData,
    split: SplitConfig,
    evaluation: EvaluationConfig,
    n_trials: int = 40,
    n_tasks_parallel: int = 1,
    timeout_overall: int | None = None,
    timeout_singlestep: int | None = None,
    random_seed: int = 42,
    tried_algorithms: list[str] | None = None,
    train_after_tuning: bool = True,
    warm_start_config: ModelConfiguration | None = None,
    enqueue: bool = True,
    keep_test_scores: bool = False,
) -> ParameterTuningJob:
    """Validate and create a PENDING job; `run_tuning_job` is sent on commit when `enqueue`.

    `keep_test_scores`: keep the winner's per-user test scores for a gate that follows."""
    check_same_project(
        project.pk,
        data=data,
        split=split,
        evaluation=evaluation,
        warm_start_config=warm_start_config,
    )
    cleaned = validate_tuning_job(
        n_trials=n_trials,
        n_tasks_parallel=n_tasks_parallel,
        timeout_overall=timeout_overall,
        timeout_singlestep=timeout_singlestep,
        random_seed=random_seed,
        tried_algorithms=tried_algorithms,
    )
    algorithms = cleaned["tried_algorithms"] or list(DEFAULT_ALGORITHMS)
    validate_split_config(project=project, **split.settings)
    validate_evaluation_config(cutoff=evaluation.cutoff)
    job = ParameterTuningJob.objects.create(
        project=project,
        data=data,
        split=split,
        evaluation=evaluation,
        n_trials=n_trials,
        n_tasks_parallel=n_tasks_parallel,
        timeout_overall=timeout_overall,
        timeout_singlestep=timeout_singlestep,
        random_seed=random_seed,
        tried_algorithms=algorithms,
        train_after_tuning=train_after_tuning,
        warm_start_config=warm_start_config,
        send_pending=enqueue,
        keep_test_scores=keep_test_scores,
    )
    if enqueue:
        TUNING_OUTBOX.send_on_commit(job.pk)
    return job


def study_name(job: ParameterTuningJob) -> str:
    # The creation time makes the name unique even if ids are ever reused (a restored database).
    return f"recotem-tuning-job-{job.pk}-{int(job.created_at.timestamp() * 1e6)}"


def _journal_path(job: ParameterTuningJob) -> Path:
    return settings.DATA_DIR / "optuna" / f"{study_name(job)}.log"


def study_delete(job: ParameterTuningJob) -> None:
    """Drop the finished job's study: its trials now live in TuningTrial rows."""
    import optuna

    try:
        if settings.IS_SQLITE:
            _journal_path(job).unlink(missing_ok=True)
        else:
            optuna.delete_study(study_name=study_name(job), storage=study_storage(job))
    except Exception:  # a leftover study is harmless; never fail a job over it
        logger.warning("could not delete the study of tuning job %s", job.pk, exc_info=True)


def study_storage(job: ParameterTuningJob) -> optuna.storages.BaseStorage:
    """Optuna storage every task of the job can reach: the project database, or a locked journal."""
    import optuna

    db = settings.DATABASES["default"]
    if not settings.IS_SQLITE:
        from sqlalchemy.engine import URL
        from sqlalchemy.pool import NullPool

        url = URL.create(
            "postgresql+psycopg",
            username=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=int(db["PORT"]) if db.get("PORT") else None,
            database=db["NAME"],
        )
        return optuna.storages.RDBStorage(
            url.render_as_string(hide_password=False),
            # No pool: a storage is made per task, and pooled connections outlived it (up to 7
            # idle connections per worker child were seen), eating PostgreSQL's client limit.
            engine_kwargs={"poolclass": NullPool},
            skip_compatibility_check=True,
        )
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = _journal_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _tuning_spec(job: ParameterTuningJob) -> TuningSpec:
    from recotem.ml.tuning import TuningSpec

    warm = None
    if job.warm_start_config is not None:
        warm = (
            job.warm_start_config.recommender_class_name,
            dict(job.warm_start_config.parameters_json),
        )
    # Parallel tasks usually share a machine: split its cores between them instead of
    # letting each irspack fit start one thread per core.
    n_threads = None
    if job.n_tasks_parallel > 1:
        n_threads = max(1, (os.cpu_count() or 1) // job.n_tasks_parallel)
    return TuningSpec(
        algorithms=tuple(job.tried_algorithms),
        n_trials=job.n_trials,
        timeout_overall=job.timeout_overall,
        timeout_singlestep=job.timeout_singlestep,
        random_seed=job.random_seed,
        n_threads=n_threads,
        warm_start=warm,
    )


def _data_of(job: ParameterTuningJob) -> TrainingData:
    if job.data is None:  # retention deleted the snapshot (only ever a finished job's)
        raise ValueError(f"the training data of tuning job #{job.pk} no longer exists")
    return job.data


def _load_split(job: ParameterTuningJob, timer: PhaseTimer) -> SplitData:
    from recotem.ml.split import split_interactions

    with timer.phase("read"):
        df = read_training_data(_data_of(job))
    with timer.phase("split"):
        return split_interactions(df, split_spec_of(job.split), **job.project.columns)


def _add_timings(job_id: int, timer: PhaseTimer) -> dict[str, float]:
    """Add this task's phase seconds to the job's ``timings`` (its tasks may run in parallel
    processes, so the row is locked for the read-modify-write)."""
    if not timer.as_dict():
        return {}
    with transaction.atomic():
        row = (
            ParameterTuningJob.objects.select_for_update()
            .filter(pk=job_id)
            .values_list("timings", flat=True)
            .first()
        )
        if row is None:
            return {}
        total = PhaseTimer()
        total.merge(row if isinstance(row, dict) else {})
        total.merge(timer.as_dict())
        ParameterTuningJob.objects.filter(pk=job_id).update(timings=total.as_dict())
    return total.as_dict()


def _deadline(job: ParameterTuningJob) -> float | None:
    if job.timeout_overall is None or job.started_at is None:
        return None
    return job.started_at.timestamp() + job.timeout_overall


def _progress_recorder(job: ParameterTuningJob) -> Callable[[TrialRecord], None]:
    """Persist each finished trial and the job's live counters (trials done, best so far)."""

    def record(trial: TrialRecord) -> None:
        score = trial.score if trial.score is not None and math.isfinite(trial.score) else None
        TuningTrial.objects.update_or_create(
            job=job,
            number=trial.number,
            defaults={
                "algorithm": trial.algorithm,
                "params": trial.params,
                "score": score,
                "duration": trial.duration,
                "state": trial.state,
            },
        )
        trials = TuningTrial.objects.filter(job=job)
        best = trials.filter(state="COMPLETE").aggregate(best=Max("score"))["best"]
        ParameterTuningJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            trials_done=trials.count(), best_score=best
        )
        if trial.error and trial.state == "FAIL":
            task_log(
                project_id=job.project_id,
                tuning_job_id=job.pk,
                level="WARNING",
                contents=f"Trial {trial.number} ({trial.algorithm}) failed: {trial.error}",
            )

    return record


def _fail(job: ParameterTuningJob, message: str) -> None:
    if not transition(
        ParameterTuningJob,
        job.pk,
        expected=jobs.ACTIVE_JOB_STATUSES,
        status=JobStatus.FAILED,
        error=message,
        completed_at=Now(),
    ):
        return
    task_log(
        project_id=job.project_id,
        tuning_job_id=job.pk,
        level="ERROR",
        contents=f"Tuning failed: {message}",
    )


def tuning_job_fail(*, job_id: int, message: str) -> None:
    """Mark a job FAILED unless it already finished (used by the chord's error callback)."""
    job = ParameterTuningJob.objects.get(pk=job_id)
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        _fail(job, message)


def tuning_job_heartbeat(*, job_id: int) -> bool:
    """Touch a RUNNING job's heartbeat; False once it is no longer RUNNING (or gone)."""
    return jobs.touch_heartbeat(ParameterTuningJob, job_id)


def active_tuning_data_ids(*, project_id: int) -> set[int]:
    """Training data that PENDING or RUNNING tuning jobs of the project still read."""
    rows = ParameterTuningJob.objects.filter(
        project_id=project_id, status__in=jobs.ACTIVE_JOB_STATUSES
    ).values_list("data_id", flat=True)
    return {pk for pk in rows if pk is not None}


# How long a parallel job may go without a heartbeat while its trial tasks wait in the queue.
PARALLEL_TUNING_QUEUE_WAIT = timedelta(hours=1)


def tuning_jobs_reap(*, now: datetime, stale_after: timedelta) -> int:
    """RUNNING jobs whose workers died → FAILED "worker lost"; returns how many.

    A parallel job's trial tasks may wait in the tuning queue behind other work, with nobody
    beating for the job meanwhile: those jobs get a longer, still finite, wait.
    """
    patient = Q(n_tasks_parallel__lte=1) | Q(last_seen__lt=now - PARALLEL_TUNING_QUEUE_WAIT)
    failed = jobs.reap_stale(ParameterTuningJob, now=now, stale_after=stale_after, only=patient)
    for pk, project_id, message in failed:
        task_log(
            project_id=project_id,
            tuning_job_id=pk,
            level="ERROR",
            contents=f"ParameterTuningJob #{pk}: {message}",
        )
    return len(failed)


def _heartbeat(job_id: int) -> Heartbeat:
    return Heartbeat.of_row(ParameterTuningJob, job_id, name=f"tuning-{job_id}")


def tuning_job_start(*, job_id: int) -> bool:
    """Claim the job (PENDING -> RUNNING) and prepare its study. False if it is not ours to run.

    Only a PENDING job is claimed: a duplicated message finds it RUNNING and does nothing, and a
    RUNNING job whose worker died is failed by the reaper (its heartbeat stops), not restarted.
    """
    from recotem.ml.tuning import prepare_study

    if not transition(
        ParameterTuningJob,
        job_id,
        expected=JobStatus.PENDING,
        status=JobStatus.RUNNING,
        started_at=Now(),
        heartbeat_at=Now(),
        error="",
    ):
        return False
    job = ParameterTuningJob.objects.select_related("project", "data", "split", "evaluation").get(
        pk=job_id
    )
    task_log(
        project_id=job.project_id,
        tuning_job_id=job.pk,
        contents=f"Tuning {', '.join(job.tried_algorithms)} with {job.n_trials} trials "
        f"in {job.n_tasks_parallel} task(s).",
    )
    timer = PhaseTimer()
    try:
        with _heartbeat(job_id):
            split = _load_split(job, timer)
            prepare_study(
                split,
                eval_spec_of(job.evaluation),
                _tuning_spec(job),
                storage=study_storage(job),
                study_name=study_name(job),
                progress=_progress_recorder(job),
            )
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached while preparing the study.")
        raise
    except Exception as exc:
        logger.exception("preparing tuning job %s failed", job_id)
        _fail(job, f"{type(exc).__name__}: {exc}")
        return False
    finally:
        _add_timings(job_id, timer)
    return True


def tuning_job_run_trials(*, job_id: int, worker: int = 0) -> None:
    """Run trials of a RUNNING job until its shared budget or deadline is used up. Never raises:
    a failing worker is logged, and the finishing step decides from what the study holds."""
    from recotem.ml.tuning import run_study_trials

    job = ParameterTuningJob.objects.select_related(
        "project", "data", "split", "evaluation", "warm_start_config"
    ).get(pk=job_id)
    if job.status != JobStatus.RUNNING or job.finishing:
        return
    record = _progress_recorder(job)
    ran = 0

    def progress(trial: Any) -> None:
        nonlocal ran
        ran += 1
        record(trial)

    timer = PhaseTimer()
    try:
        with _heartbeat(job_id):
            split = _load_split(job, timer)
            with timer.phase("fit"):
                run_study_trials(
                    split,
                    eval_spec_of(job.evaluation),
                    _tuning_spec(job),
                    storage=study_storage(job),
                    study_name=study_name(job),
                    progress=progress,
                    deadline=_deadline(job),
                    should_stop=StopWhenEnded(ParameterTuningJob, job_id),
                )
        task_log(
            project_id=job.project_id,
            tuning_job_id=job.pk,
            contents=f"Tuning task {worker} (pid {os.getpid()}) finished after {ran} trial(s).",
        )
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached during tuning.")
        raise
    except Exception as exc:
        logger.exception("tuning worker %s of job %s failed", worker, job_id)
        task_log(
            project_id=job.project_id,
            tuning_job_id=job.pk,
            level="ERROR",
            contents=f"Tuning task {worker} stopped: {type(exc).__name__}: {exc}\n"
            f"{traceback.format_exc(limit=5)}",
        )
    finally:
        _add_timings(job_id, timer)


def tuning_job_finish(*, job_id: int) -> ParameterTuningJob:
    """Pick the best trial, save it as a configuration, train it if asked, then COMPLETED.

    `tuned_model` is set before the status turns COMPLETED, so a client polling for
    COMPLETED always finds the model. Nothing completed / all zero / training failed: FAILED.
    """
    # Exclusive claim: a duplicated chord callback (or a second delivery) finds it taken.
    claimed = ParameterTuningJob.objects.filter(
        pk=job_id, status=JobStatus.RUNNING, finishing=False
    ).update(finishing=True, heartbeat_at=Now())
    job = ParameterTuningJob.objects.select_related("project", "data", "split", "evaluation").get(
        pk=job_id
    )
    if claimed != 1:
        return job
    timer = PhaseTimer()
    try:
        with _heartbeat(job_id):
            return _finish(job, timer)
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached while finishing the job.")
        raise
    finally:
        total = _add_timings(job_id, timer)
        if total:
            task_log(
                project_id=job.project_id,
                tuning_job_id=job_id,
                contents=f"Timings (all tasks): {describe(total)}.",
            )


def _finish(job: ParameterTuningJob, timer: PhaseTimer) -> ParameterTuningJob:
    from recotem.ml.tuning import TuningError, collect_study_result

    job_id = job.pk
    try:
        split = _load_split(job, timer)
        with timer.phase("evaluate"):
            result = collect_study_result(
                split,
                eval_spec_of(job.evaluation),
                _tuning_spec(job),
                storage=study_storage(job),
                study_name=study_name(job),
                keep_test_scores=job.keep_test_scores,
            )
    except TuningError as exc:
        study_delete(job)
        _fail(job, str(exc))
        return _refreshed(job)
    except Exception as exc:
        logger.exception("collecting tuning job %s failed", job_id)
        _fail(job, f"{type(exc).__name__}: {exc}")
        return _refreshed(job)
    study_delete(job)
    record = _progress_recorder(job)
    for trial in result.trials:  # trials a crashed worker could not report
        if not TuningTrial.objects.filter(job=job, number=trial.number).exists():
            record(trial)
    config = model_configuration_create(
        project=job.project,
        name=f"Tuning job #{job.pk} best",
        recommender_class_name=result.best_class_name,
        parameters_json=result.best_params,
        tuning_job_id=job.pk,
        rename_on_clash=True,
    )
    ParameterTuningJob.objects.filter(pk=job.pk).update(
        best_config=config,
        best_score=result.best_score,
        test_metrics=result.test_metrics,
        test_scores=None if result.test_scores is None else result.test_scores.to_bytes(),
        trials_done=TuningTrial.objects.filter(job=job).count(),
    )
    task_log(
        project_id=job.project_id,
        tuning_job_id=job.pk,
        contents=f"Best: {result.best_class_name} {result.best_params}, validation "
        f"{result.target_metric}@{result.cutoff} = {result.best_score:.4f}; "
        f"test metrics {result.test_metrics}.",
    )
    tuned_model_id = None
    if job.train_after_tuning and _still_running(job):
        # The test score of the tuning split is the honest one; keep it on the model.
        model = trained_model_create(
            configuration=config,
            data=_data_of(job),
            enqueue=False,
            test_metrics=result.test_metrics,
        )
        del split  # the refit reads the data again; do not hold both
        with timer.phase("refit"):
            model = trained_model_train(trained_model_id=model.pk)
        if model.status != JobStatus.COMPLETED:
            ParameterTuningJob.objects.filter(pk=job.pk).update(tuned_model=model)
            _fail(job, f"Training the best configuration failed: {model.error}")
            return _refreshed(job)
        tuned_model_id = model.pk
    transition(
        ParameterTuningJob,
        job.pk,
        expected=JobStatus.RUNNING,
        tuned_model_id=tuned_model_id,
        status=JobStatus.COMPLETED,
        completed_at=Now(),
    )
    task_log(project_id=job.project_id, tuning_job_id=job.pk, contents="Tuning job completed.")
    return _refreshed(job)


def _still_running(job: ParameterTuningJob) -> bool:
    # The reaper may have failed the job while the best trial was scored: do not train for it.
    return ParameterTuningJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).exists()


def _refreshed(job: ParameterTuningJob) -> ParameterTuningJob:
    job.refresh_from_db()
    return job


def tuning_job_run(*, job_id: int) -> ParameterTuningJob:
    """The whole job in this process, including training; ends COMPLETED or FAILED."""
    started = time.time()
    if tuning_job_start(job_id=job_id):
        tuning_job_run_trials(job_id=job_id)
        tuning_job_finish(job_id=job_id)
    job = ParameterTuningJob.objects.get(pk=job_id)
    logger.info("tuning job %s ended %s in %.1f s", job_id, job.status, time.time() - started)
    return job
