"""One retraining run, start to finish: data check, retune, train, gate, deploy, record.

Called by the Celery task with a run id. Everything the run learns is written to the run row as
it goes, so a crash leaves a readable trail; the reaper ends runs whose worker died.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from recotem.retraining import services
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.services import RunError
from recotem.retraining.sources import SourceError
from recotem.training.heartbeat import Heartbeat

logger = logging.getLogger(__name__)


def run_execute(*, run_id: int, task_id: str = "") -> RetrainingRun | None:
    """Execute a PENDING run; returns None when another message already took it."""
    run = services.run_start(run_id=run_id, task_id=task_id)
    if run is None:
        return None
    with Heartbeat(lambda: services.run_heartbeat(run_id=run.pk), name=f"run-{run.pk}"):
        try:
            _pipeline(run)
        except SoftTimeLimitExceeded:
            # Celery's soft limit (time_limit_seconds): end the run readably before the hard kill.
            limit = run.schedule.time_limit_seconds
            message = f"time limit: the run exceeded time_limit_seconds={limit}."
            services.run_fail(run=run, message=message, retryable=True,
                              before_retry=lambda: services.fail_run_children(run, message))
        except (RunError, SourceError) as exc:
            services.run_fail(run=run, message=str(exc), retryable=exc.retryable)
        except Exception as exc:  # anything else is a bug or an outage: readable, and retried
            logger.exception("retraining run %s failed", run.pk)
            services.run_fail(run=run, message=f"{type(exc).__name__}: {exc}", retryable=True)
    run.refresh_from_db()
    return run


def _save(run: RetrainingRun, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(run, key, value)
    RetrainingRun.objects.filter(pk=run.pk).update(**fields)


def _still_running(run: RetrainingRun) -> bool:
    return RetrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).exists()


def _resolve_data(schedule: RetrainingSchedule) -> Any:
    from recotem.projects.models import DataSource, TrainingData
    from recotem.retraining.sources import source_read

    source = DataSource.objects.filter(project_id=schedule.project_id).first()
    if source is not None:
        return source_read(source=source)
    if schedule.training_data_id is not None:
        return schedule.training_data
    data = TrainingData.objects.filter(project_id=schedule.project_id).order_by("-id").first()
    if data is None:
        raise RunError("The project has no training data and no data source.", retryable=False)
    return data


def _pipeline(run: RetrainingRun) -> None:
    schedule = RetrainingSchedule.objects.select_related(
        "project", "model_configuration", "split_config", "evaluation_config", "deploy_slot"
    ).get(pk=run.schedule_id)

    # 0. Configuration problems cannot be fixed by retrying.
    if schedule.retune and (schedule.split_config is None or schedule.evaluation_config is None):
        raise RunError("retune needs split_config and evaluation_config; set them on the schedule.", retryable=False)
    if not schedule.retune and schedule.model_configuration is None:
        raise RunError("No model_configuration (it may have been deleted); set one or enable retune.", retryable=False)

    # 1. Data (a source is read here) and the data check.
    data = _resolve_data(schedule)
    _save(run, training_data=data, data_fingerprint=data.fingerprint, data_rows=data.row_count)
    previous = (
        RetrainingRun.objects.filter(schedule=schedule, status=RunStatus.COMPLETED)
        .exclude(pk=run.pk).order_by("-id").first()
    )
    if not run.force and previous is not None and previous.data_fingerprint == data.fingerprint:
        services.run_finish(
            run=run, status=RunStatus.SKIPPED,
            skip_reason=(
                f"Data unchanged since run #{previous.pk} ({data.row_count} rows, fingerprint "
                f"{data.fingerprint[:19]}…); trigger with force to train anyway."
            ),
        )
        return

    # 2. Retune, warm-started from the configuration that produced the previous model.
    configuration = schedule.model_configuration
    trained = None
    if schedule.retune:
        from recotem.tuning.models import JobStatus
        from recotem.tuning.services import tuning_job_create, tuning_job_run

        warm = None
        if previous is not None and previous.trained_model is not None:
            warm = previous.trained_model.configuration
        warm = warm or schedule.model_configuration
        job = tuning_job_create(
            project=schedule.project, data=data, split=schedule.split_config,
            evaluation=schedule.evaluation_config, n_trials=schedule.n_trials,
            timeout_overall=schedule.timeout_overall, tried_algorithms=schedule.tried_algorithms or None,
            train_after_tuning=True, warm_start_config=warm, enqueue=False,
        )
        _save(run, tuning_job=job)
        job = tuning_job_run(job_id=job.pk)
        if job.status != JobStatus.COMPLETED or job.best_config is None:
            raise RunError(f"Tuning job #{job.pk} failed: {job.error or job.status}")
        configuration = job.best_config
        if job.tuned_model is not None and job.tuned_model.status == JobStatus.COMPLETED:
            trained = job.tuned_model

    # 3. Train on all of the data with the chosen configuration.
    if trained is None:
        from recotem.training.services import trained_model_create, trained_model_train

        assert configuration is not None
        trained = trained_model_create(configuration=configuration, data=data, enqueue=False)
        _save(run, trained_model=trained)
        trained = trained_model_train(trained_model_id=trained.pk)
        if trained.status != "COMPLETED":
            raise RunError(f"Training model #{trained.pk} failed: {trained.error or trained.status}")
    _save(run, trained_model=trained, metrics=dict(trained.test_metrics or {}))

    # 4. Gate and deploy.
    fields: dict[str, Any] = {"gate_decision": RetrainingRun.Gate.NOT_REQUESTED}
    if schedule.auto_deploy:
        fields = _gate_and_deploy(run, schedule, data, trained)
    if not services.run_finish(run=run, status=RunStatus.COMPLETED, **fields):
        return
    try:
        services.models_retain(project_id=schedule.project_id)
    except Exception:  # retention is housekeeping: never fail a finished run for it
        logger.exception("retention after run %s failed", run.pk)


def _target_slot(schedule: RetrainingSchedule) -> Any:
    from recotem.deployment.models import DeploymentSlot

    if schedule.deploy_slot is not None:
        return schedule.deploy_slot
    slots = DeploymentSlot.objects.filter(project_id=schedule.project_id)
    active = list(slots.filter(is_active=True)[:2])
    if len(active) > 1:
        raise RunError(
            "The project has several active slots and the schedule names no deploy_slot; "
            "choose the slot to update.", retryable=False,
        )
    if active:
        return active[0]
    if slots.exists():
        # Reviving or adding a slot next to ones a user switched off would serve traffic they stopped.
        raise RunError("no active slot to deploy to; set deploy_slot on the schedule.", retryable=False)
    return None  # no slot at all: a new "auto-deploy" slot (weight 100) is created


def _metric(metrics: dict[str, Any], name: str, cutoff: int) -> float | None:
    for key in (f"{name}@{cutoff}", name):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def _gate_and_deploy(run: RetrainingRun, schedule: RetrainingSchedule, data: Any, trained: Any) -> dict[str, Any]:
    """Compare fairly with the incumbent, then replace the slot's model (weight kept) or reject."""
    from recotem.deployment.services import slot_create, slot_set_model
    from recotem.ml.evaluation import EvalSpec
    from recotem.ml.gate import compare_configurations, gate_passes

    slot = _target_slot(schedule)
    incumbent = slot.trained_model if slot is not None else None
    ev = schedule.evaluation_config
    spec = EvalSpec(cutoff=ev.cutoff, target_metric=ev.target_metric) if ev else EvalSpec()
    label = f"{spec.target_metric}@{spec.cutoff}"
    metrics = dict(trained.test_metrics or {})
    incumbent_metrics: dict[str, Any] = {}
    passed = True
    if incumbent is not None and incumbent.pk != trained.pk:
        new_cfg, old_cfg = trained.configuration, incumbent.configuration
        same = (new_cfg.pk == old_cfg.pk) or (
            new_cfg.recommender_class_name == old_cfg.recommender_class_name
            and new_cfg.parameters_json == old_cfg.parameters_json
        )
        new_score = _metric(metrics, spec.target_metric, spec.cutoff)
        old_score = _metric(incumbent.test_metrics or {}, spec.target_metric, spec.cutoff)
        if same and new_score is not None and old_score is not None:
            method = "same configuration: stored test metrics"
            incumbent_metrics = dict(incumbent.test_metrics or {})
        else:
            from recotem.training.services import read_training_data

            project = schedule.project
            df = read_training_data(data)  # through the storage API: works on S3 too
            scores = compare_configurations(
                df,
                candidate=(new_cfg.recommender_class_name, new_cfg.parameters_json),
                incumbent=(old_cfg.recommender_class_name, old_cfg.parameters_json),
                split=_split_spec(schedule), evaluation=spec, **project.columns,
            )
            method = "both configurations refitted on the same holdout of the new data"
            metrics = {**metrics, "gate": scores.candidate}
            incumbent_metrics = dict(scores.incumbent)
            new_score, old_score = scores.candidate[spec.target_metric], scores.incumbent[spec.target_metric]
        passed = gate_passes(float(new_score), float(old_score), schedule.gate_tolerance)
        incumbent_metrics.update({"model_id": incumbent.pk, "gate_score": old_score})
        metrics.update({"gate_score": new_score, "gate_metric": label, "gate_method": method})
    if not passed:
        return {"gate_decision": RetrainingRun.Gate.REJECTED, "metrics": metrics, "incumbent_metrics": incumbent_metrics}
    if not _still_running(run):  # the reaper ended this run: a zombie must not deploy
        raise RunError("The run was ended by the reaper before deploying.")
    changed_by = f"retraining run #{run.pk}"
    if slot is None:
        slot = slot_create(project=schedule.project, name="auto-deploy", trained_model=trained, weight=100,
                           changed_by=changed_by)
    else:
        slot = slot_set_model(slot=slot, trained_model=trained, changed_by=changed_by)
    return {
        "gate_decision": RetrainingRun.Gate.DEPLOYED, "deployed_slot": slot,
        "metrics": metrics, "incumbent_metrics": incumbent_metrics,
    }


def _split_spec(schedule: RetrainingSchedule) -> Any:
    from recotem.ml.split import SplitSpec

    sc = schedule.split_config
    if sc is None:
        return SplitSpec()
    return SplitSpec(
        scheme=sc.scheme, heldout_ratio=sc.heldout_ratio, n_heldout=sc.n_heldout,
        test_user_ratio=sc.test_user_ratio, n_test_users=sc.n_test_users, random_seed=sc.random_seed,
    )
