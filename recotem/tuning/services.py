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
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from recotem.core.exceptions import ApplicationError
from recotem.projects.models import Project, TrainingData
from recotem.training.heartbeat import Heartbeat
from recotem.training.services import read_training_data, task_log
from recotem.tuning.models import (
    EvaluationConfig,
    JobStatus,
    ModelConfiguration,
    ParameterTuningJob,
    SplitConfig,
    TuningTrial,
)

logger = logging.getLogger(__name__)

MAX_TASKS_PARALLEL = 16


# --- configurations ---------------------------------------------------------------------------


def split_spec_of(split: SplitConfig) -> Any:
    from recotem.ml.split import SplitSpec

    # Tuning validates on every user that is not a test user: on small data a validation set
    # the size of the test set is so noisy that the search picks the wrong algorithm (ml-100k:
    # 0.406 instead of 0.455 nDCG@10 on hidden pairs). With a fixed test-user count, the
    # validation set keeps the same size (the ratio would depend on the user count).
    return SplitSpec(
        scheme=split.scheme,  # type: ignore[arg-type]
        heldout_ratio=split.heldout_ratio,
        n_heldout=split.n_heldout,
        test_user_ratio=split.test_user_ratio,
        n_test_users=split.n_test_users,
        val_user_ratio=None if split.n_test_users is not None else 1.0 - split.test_user_ratio,
        n_val_users=split.n_test_users,
        random_seed=split.random_seed,
    )


def eval_spec_of(evaluation: EvaluationConfig) -> Any:
    from recotem.ml.evaluation import EvalSpec

    return EvalSpec(cutoff=evaluation.cutoff, target_metric=evaluation.target_metric)  # type: ignore[arg-type]


def check_algorithms(names: list[str]) -> list[str]:
    """Canonical irspack class names, or ApplicationError naming the unknown one."""
    from recotem.ml.registry import canonical_name

    result: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ApplicationError("Each algorithm must be a class name string.", field="tried_algorithms")
        try:
            canonical = canonical_name(name)
        except ValueError as exc:
            raise ApplicationError(str(exc), field="tried_algorithms") from None
        if canonical not in result:
            result.append(canonical)
    return result


def _unique_config_name(project_id: int, base: str) -> str:
    name, n = base, 1
    while ModelConfiguration.objects.filter(project_id=project_id, name=name).exists():
        n += 1
        name = f"{base} ({n})"
    return name


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
) -> ParameterTuningJob:
    """Validate and create a PENDING job; `run_tuning_job` is sent on commit when `enqueue`."""
    from recotem.ml.tuning import DEFAULT_ALGORITHMS

    for field, obj in (("data", data), ("split", split), ("evaluation", evaluation),
                       ("warm_start_config", warm_start_config)):
        if obj is not None and obj.project_id != project.pk:
            raise ApplicationError("Must belong to the same project.", field=field)
    if not 1 <= n_trials <= 10_000:
        raise ApplicationError("Must be between 1 and 10000.", field="n_trials")
    if not 1 <= n_tasks_parallel <= MAX_TASKS_PARALLEL:
        raise ApplicationError(f"Must be between 1 and {MAX_TASKS_PARALLEL}.", field="n_tasks_parallel")
    for field, value in (("timeout_overall", timeout_overall), ("timeout_singlestep", timeout_singlestep)):
        if value is not None and value <= 0:
            raise ApplicationError("Must be a positive number of seconds.", field=field)
    algorithms = check_algorithms(list(tried_algorithms) if tried_algorithms else list(DEFAULT_ALGORITHMS))
    if not algorithms:
        raise ApplicationError("Name at least one algorithm.", field="tried_algorithms")
    try:
        split_spec_of(split).validate()
        eval_spec_of(evaluation).validate()
    except ValueError as exc:
        raise ApplicationError(str(exc), field="split") from None
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
    )
    if enqueue:
        from recotem.tuning.tasks import run_tuning_job

        job_id = job.pk
        transaction.on_commit(lambda: run_tuning_job.delay(job_id))
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


def study_storage(job: ParameterTuningJob) -> Any:
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


def _tuning_spec(job: ParameterTuningJob) -> Any:
    from recotem.ml.tuning import TuningSpec

    warm = None
    if job.warm_start_config is not None:
        warm = (job.warm_start_config.recommender_class_name, dict(job.warm_start_config.parameters_json))
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


def _load_split(job: ParameterTuningJob) -> Any:
    from recotem.ml.split import split_interactions

    df = read_training_data(job.data)
    return split_interactions(df, split_spec_of(job.split), **job.project.columns)


def _deadline(job: ParameterTuningJob) -> float | None:
    if job.timeout_overall is None or job.started_at is None:
        return None
    return job.started_at.timestamp() + job.timeout_overall


def _progress_recorder(job: ParameterTuningJob) -> Any:
    """Persist each finished trial and the job's live counters (trials done, best so far)."""

    def record(trial: Any) -> None:
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
            task_log(project_id=job.project_id, tuning_job=job, level="WARNING",
                     contents=f"Trial {trial.number} ({trial.algorithm}) failed: {trial.error}")

    return record


def _fail(job: ParameterTuningJob, message: str) -> None:
    ParameterTuningJob.objects.filter(pk=job.pk).exclude(status=JobStatus.COMPLETED).update(
        status=JobStatus.FAILED, error=message, completed_at=timezone.now()
    )
    task_log(project_id=job.project_id, tuning_job=job, level="ERROR", contents=f"Tuning failed: {message}")


def tuning_job_fail(*, job_id: int, message: str) -> None:
    """Mark a job FAILED unless it already finished (used by the chord's error callback)."""
    job = ParameterTuningJob.objects.get(pk=job_id)
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        _fail(job, message)


def tuning_job_heartbeat(*, job_id: int) -> bool:
    """Touch a RUNNING job's heartbeat; False once it is no longer RUNNING (or gone)."""
    return bool(
        ParameterTuningJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
    )


def _heartbeat(job_id: int) -> Heartbeat:
    return Heartbeat(lambda: tuning_job_heartbeat(job_id=job_id), name=f"tuning-{job_id}")


def tuning_job_start(*, job_id: int) -> bool:
    """Claim the job (PENDING -> RUNNING) and prepare its study. False if it is not ours to run.

    Only a PENDING job is claimed: a duplicated message finds it RUNNING and does nothing, and a
    RUNNING job whose worker died is failed by the reaper (its heartbeat stops), not restarted.
    """
    from recotem.ml.tuning import prepare_study

    now = timezone.now()
    claimed = ParameterTuningJob.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, error=""
    )
    if claimed != 1:
        return False
    job = ParameterTuningJob.objects.select_related("project", "data", "split", "evaluation").get(pk=job_id)
    task_log(project_id=job.project_id, tuning_job=job,
             contents=f"Tuning {', '.join(job.tried_algorithms)} with {job.n_trials} trials "
                      f"in {job.n_tasks_parallel} task(s).")
    try:
        with _heartbeat(job_id):
            split = _load_split(job)
            prepare_study(split, eval_spec_of(job.evaluation), _tuning_spec(job),
                          storage=study_storage(job), study_name=study_name(job),
                          progress=_progress_recorder(job))
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached while preparing the study.")
        raise
    except Exception as exc:
        logger.exception("preparing tuning job %s failed", job_id)
        _fail(job, f"{type(exc).__name__}: {exc}")
        return False
    return True


def tuning_job_run_trials(*, job_id: int, worker: int = 0) -> None:
    """Run trials of a RUNNING job until its shared budget or deadline is used up. Never raises:
    a failing worker is logged, and the finishing step decides from what the study holds."""
    from recotem.ml.tuning import run_study_trials

    job = ParameterTuningJob.objects.select_related("project", "data", "split", "evaluation",
                                                    "warm_start_config").get(pk=job_id)
    if job.status != JobStatus.RUNNING or job.finishing:
        return
    record = _progress_recorder(job)
    ran = 0

    def progress(trial: Any) -> None:
        nonlocal ran
        ran += 1
        record(trial)

    try:
        with _heartbeat(job_id):
            split = _load_split(job)
            run_study_trials(split, eval_spec_of(job.evaluation), _tuning_spec(job),
                             storage=study_storage(job), study_name=study_name(job),
                             progress=progress, deadline=_deadline(job))
        task_log(project_id=job.project_id, tuning_job=job,
                 contents=f"Tuning task {worker} (pid {os.getpid()}) finished after {ran} trial(s).")
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached during tuning.")
        raise
    except Exception as exc:
        logger.exception("tuning worker %s of job %s failed", worker, job_id)
        task_log(project_id=job.project_id, tuning_job=job, level="ERROR",
                 contents=f"Tuning task {worker} stopped: {type(exc).__name__}: {exc}\n"
                          f"{traceback.format_exc(limit=5)}")


def tuning_job_finish(*, job_id: int) -> ParameterTuningJob:
    """Pick the best trial, save it as a configuration, train it if asked, then COMPLETED.

    `tuned_model` is set before the status turns COMPLETED, so a client polling for
    COMPLETED always finds the model. Nothing completed / all zero / training failed: FAILED.
    """
    # Exclusive claim: a duplicated chord callback (or a second delivery) finds it taken.
    claimed = ParameterTuningJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, finishing=False).update(
        finishing=True, heartbeat_at=timezone.now()
    )
    job = ParameterTuningJob.objects.select_related("project", "data", "split", "evaluation").get(pk=job_id)
    if claimed != 1:
        return job
    try:
        with _heartbeat(job_id):
            return _finish(job)
    except SoftTimeLimitExceeded:
        _fail(job, "time limit: the task's time limit was reached while finishing the job.")
        raise


def _finish(job: ParameterTuningJob) -> ParameterTuningJob:
    from recotem.ml.tuning import TuningError, collect_study_result

    job_id = job.pk
    try:
        split = _load_split(job)
        result = collect_study_result(split, eval_spec_of(job.evaluation), _tuning_spec(job),
                                      storage=study_storage(job), study_name=study_name(job))
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
    config = ModelConfiguration.objects.create(
        project=job.project,
        name=_unique_config_name(job.project_id, f"Tuning job #{job.pk} best"),
        recommender_class_name=result.best_class_name,
        parameters_json=result.best_params,
        tuning_job=job,
    )
    ParameterTuningJob.objects.filter(pk=job.pk).update(
        best_config=config, best_score=result.best_score, test_metrics=result.test_metrics,
        trials_done=TuningTrial.objects.filter(job=job).count(),
    )
    task_log(project_id=job.project_id, tuning_job=job,
             contents=f"Best: {result.best_class_name} {result.best_params}, validation "
                      f"{result.target_metric}@{result.cutoff} = {result.best_score:.4f}; "
                      f"test metrics {result.test_metrics}.")
    tuned_model_id = None
    if job.train_after_tuning and _still_running(job):
        from recotem.training.models import TrainedModel
        from recotem.training.services import trained_model_create, trained_model_train

        model = trained_model_create(configuration=config, data=job.data, enqueue=False)
        # The test score of the tuning split is the honest one; keep it on the model.
        TrainedModel.objects.filter(pk=model.pk).update(test_metrics=result.test_metrics)
        model = trained_model_train(trained_model_id=model.pk)
        if model.status != JobStatus.COMPLETED:
            ParameterTuningJob.objects.filter(pk=job.pk).update(tuned_model=model)
            _fail(job, f"Training the best configuration failed: {model.error}")
            return _refreshed(job)
        tuned_model_id = model.pk
    ParameterTuningJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
        tuned_model_id=tuned_model_id, status=JobStatus.COMPLETED, completed_at=timezone.now()
    )
    task_log(project_id=job.project_id, tuning_job=job, contents="Tuning job completed.")
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
