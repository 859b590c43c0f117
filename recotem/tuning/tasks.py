"""Celery tasks for tuning (queue "tuning"). Thin: take ids, call services."""

from __future__ import annotations

from celery import chord, shared_task

from recotem.tuning import services
from recotem.tuning.models import ParameterTuningJob
from recotem.tuning.outbox import RUN_TUNING_TASK


@shared_task(name=RUN_TUNING_TASK, acks_late=True)
def run_tuning_job(job_id: int) -> str:
    """Run a tuning job: in this task when n_tasks_parallel is 1, else as a chord of trial
    tasks sharing one Optuna study, with `finish_tuning_job` as the callback."""
    job = ParameterTuningJob.objects.get(pk=job_id)
    if job.n_tasks_parallel <= 1:
        return services.tuning_job_run(job_id=job_id).status
    if not services.tuning_job_start(job_id=job_id):
        return ParameterTuningJob.objects.get(pk=job_id).status
    header = [run_tuning_trials.si(job_id, worker) for worker in range(job.n_tasks_parallel)]
    # If the chord itself breaks (a header task crashed outside the service's own error
    # handling), the errback still ends the job instead of leaving it RUNNING forever.
    chord(header)(finish_tuning_job.si(job_id).on_error(fail_tuning_job.si(job_id)))
    return "RUNNING"


@shared_task(name="recotem.tuning.tasks.run_tuning_trials", acks_late=True)
def run_tuning_trials(job_id: int, worker: int) -> int:
    services.tuning_job_run_trials(job_id=job_id, worker=worker)
    return worker


@shared_task(name="recotem.tuning.tasks.finish_tuning_job", acks_late=True)
def finish_tuning_job(job_id: int) -> str:
    return services.tuning_job_finish(job_id=job_id).status


@shared_task(name="recotem.tuning.tasks.fail_tuning_job")
def fail_tuning_job(job_id: int) -> None:
    services.tuning_job_fail(
        job_id=job_id, message="A parallel tuning task failed; see the task log."
    )
