"""One retraining run, start to finish: read, data check, retune, train, gate, deploy, record.

Called by the Celery task with a run id. Everything the run learns is written to the run row as
it goes (under the attempt's lease, `runs.run_save`), so a crash leaves a readable trail and a
worker that lost the run can write nothing more. Between steps, and on every heartbeat, the
runner checks whether it was cancelled or lost the run; the gate, the deploy and the finish
happen in one transaction (`runs.run_finish(on_finish=...)`), so a run that was ended never
deploys and a slot changed meanwhile (a rollback) is never overwritten. In canary mode the same
transaction starts the canary instead (`retraining.canary`); a periodic task decides it later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections, connection

from recotem.core.jobs import Heartbeat, JobStatus, heartbeat_interval, task_log
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import slot_create, slot_model_change_refusal, slot_set_model
from recotem.projects.models import DataSource, TrainingData
from recotem.projects.selectors import read_training_data
from recotem.projects.sources import source_read
from recotem.retraining import runs
from recotem.retraining.canary import CanaryRefused, canary_slot_ids, canary_start
from recotem.retraining.models import RetrainingRun, RetrainingSchedule, RunStatus
from recotem.retraining.reaper import fail_run_children, project_retain
from recotem.retraining.runs import RunCancelled, RunError, RunFenced
from recotem.training.models import TrainedModel
from recotem.training.services import (
    trained_model_create,
    trained_model_record_metrics,
    trained_model_train,
)
from recotem.tuning.models import ParameterTuningJob
from recotem.tuning.services import eval_spec_of, split_spec_of, tuning_job_create, tuning_job_run

if TYPE_CHECKING:
    from recotem.ml.gate import HeldOutScores

logger = logging.getLogger(__name__)

# Keys of a gate report: every one is present on a run that asked for a deploy (null where not
# computed), so clients need no special cases.
GATE_REPORT_KEYS = (
    "metric",
    "candidate_score",
    "incumbent_score",
    "ci_low",
    "ci_high",
    "n_eval_users",
    "method",
    "floor",
    "reason",
)
STAGES = ("read", "tune", "train", "gate", "deploy")


class _Watch:
    """The run's heartbeat (every ≤ 2 s, database time) and what it learns: a cancel request, or
    that this attempt lost the run. On either it also stops the run's tuning job and model."""

    def __init__(self, run: RetrainingRun) -> None:
        self.run = run
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.heartbeat = Heartbeat(
            self._touch, name=f"run-{run.pk}", interval=min(heartbeat_interval(), 2.0)
        )

    def _touch(self) -> bool:
        state = runs.run_heartbeat(self.run)
        if state == "ok":
            return True
        event = self.cancelled if state == "cancel" else self.lost
        if not event.is_set():
            event.set()
            ids = RetrainingRun.objects.filter(pk=self.run.pk).values_list(
                "tuning_job_id", "trained_model_id"
            )
            self.run.tuning_job_id, self.run.trained_model_id = ids.first() or (None, None)
            fail_run_children(self.run, "cancelled" if state == "cancel" else "run ended")
        return state == "cancel"  # keep beating while we stop, so the reaper leaves us be

    def checkpoint(self) -> None:
        if self.lost.is_set():
            raise RunFenced(f"run #{self.run.pk} was ended by someone else")
        if self.cancelled.is_set():
            raise RunCancelled()


def run_execute(*, run_id: int, task_id: str = "") -> RetrainingRun | None:
    """Execute a PENDING run; returns None when another message already took it."""
    run = runs.run_start(run_id=run_id, task_id=task_id)
    if run is None:
        return None
    watch = _Watch(run)
    timings: dict[str, Any] = {}
    with watch.heartbeat:
        try:
            _pipeline(run, watch, timings)
        except RunFenced:
            logger.warning("run %s was ended elsewhere; this attempt stops without writing", run.pk)
        except RunCancelled:
            runs.run_finish(
                run=run, status=RunStatus.CANCELLED, skip_reason="Cancelled.", timings=timings
            )
        except Exception as exc:  # includes Celery's soft time limit
            if isinstance(exc, DatabaseError):
                connection.close()  # a broken connection is replaced before we record the failure
            message, retryable = runs.classify(exc)
            if _is_time_limit(exc):
                limit = run.schedule.time_limit_seconds
                message = f"time limit: the run exceeded time_limit_seconds={limit}."
            if not isinstance(exc, RunError):
                logger.exception("retraining run %s failed", run.pk)
            _record_failure(run, message, retryable, timings)
            if _is_time_limit(exc):
                fail_run_children(run, message)
    _log_timings(run, timings)
    if not connection.in_atomic_block:
        # A connection broken during the run is replaced before the final read; never drop one
        # from under a caller's open transaction.
        close_old_connections()
    run.refresh_from_db()
    return run


def _is_time_limit(exc: BaseException) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(exc, SoftTimeLimitExceeded)


def _record_failure(
    run: RetrainingRun, message: str, retryable: bool, timings: dict[str, Any]
) -> None:
    for attempt in range(2):  # a database blip while recording: one fresh connection, once more
        try:
            runs.run_save(run, timings=timings)
            runs.run_fail(run=run, message=message, retryable=retryable)
            return
        except RunFenced:
            return
        except DatabaseError:
            connection.close()
            if attempt:
                logger.exception("could not record the failure of run %s; the reaper will", run.pk)


def _log_timings(run: RetrainingRun, timings: dict[str, Any]) -> None:
    if not timings:
        return
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items() if isinstance(v, float))
    try:
        task_log(
            project_id=run.schedule.project_id,
            trained_model_id=run.trained_model_id,
            contents=f"Retraining run #{run.pk} ({run.status}): {phases}.",
        )
    except DatabaseError:
        logger.warning("could not log the timings of run %s", run.pk)


def _failpoint(stage: str) -> None:
    """Fault-injection hook for the reliability suite (docs/reliability.md): with
    RECOTEM_FAILPOINTS="train:5,deploy:5" a run pauses that many seconds on entering a stage,
    so a test can kill the worker inside it. Unset in production: costs one dict lookup."""
    spec = os.environ.get("RECOTEM_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        name, _, seconds = item.partition(":")
        if name.strip() == stage:
            time.sleep(float(seconds or 0))


@contextmanager
def _stage(run: RetrainingRun, watch: _Watch, timings: dict[str, Any], name: str) -> Iterator[None]:
    watch.checkpoint()
    runs.run_save(run, stage=name)
    _failpoint(name)
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - began, 3)
    watch.checkpoint()


def _resolve_data(schedule: RetrainingSchedule) -> TrainingData:
    source = DataSource.objects.filter(project_id=schedule.project_id).first()
    if source is not None:
        return source_read(source=source)
    if schedule.training_data_id is not None:
        assert schedule.training_data is not None
        return schedule.training_data
    data = TrainingData.objects.filter(project_id=schedule.project_id).order_by("-id").first()
    if data is None:
        raise RunError("The project has no training data and no data source.", retryable=False)
    return data


def _pipeline(run: RetrainingRun, watch: _Watch, timings: dict[str, Any]) -> None:
    schedule = RetrainingSchedule.objects.select_related(
        "project", "model_configuration", "split_config", "evaluation_config", "deploy_slot"
    ).get(pk=run.schedule_id)

    # 0. Configuration problems cannot be fixed by retrying.
    if schedule.retune and (schedule.split_config is None or schedule.evaluation_config is None):
        raise RunError(
            "retune needs split_config and evaluation_config; set them on the schedule.",
            retryable=False,
        )
    if not schedule.retune and schedule.model_configuration is None:
        raise RunError(
            "No model_configuration (it may have been deleted); set one or enable retune.",
            retryable=False,
        )

    # 1. Data (a source is read here) and the data check.
    with _stage(run, watch, timings, "read"):
        data = _resolve_data(schedule)
        runs.run_save(
            run, training_data=data, data_fingerprint=data.fingerprint, data_rows=data.row_count
        )
    previous = (
        RetrainingRun.objects.filter(schedule=schedule, status=RunStatus.COMPLETED)
        .exclude(pk=run.pk)
        .order_by("-id")
        .first()
    )
    if not run.force and previous is not None and previous.data_fingerprint == data.fingerprint:
        runs.run_finish(
            run=run,
            status=RunStatus.SKIPPED,
            timings=timings,
            skip_reason=(
                f"Data unchanged since run #{previous.pk} ({data.row_count} rows, fingerprint "
                f"{data.fingerprint[:19]}…); trigger with force to train anyway."
            ),
        )
        return

    # 2. Retune, warm-started from the configuration that produced the previous model.
    configuration = schedule.model_configuration
    trained: TrainedModel | None = None
    job: ParameterTuningJob | None = None
    if schedule.retune:
        with _stage(run, watch, timings, "tune"):
            warm = None
            if previous is not None and previous.trained_model is not None:
                warm = previous.trained_model.configuration
            warm = warm or schedule.model_configuration
            assert schedule.split_config is not None and schedule.evaluation_config is not None
            job = tuning_job_create(
                project=schedule.project,
                data=data,
                split=schedule.split_config,
                evaluation=schedule.evaluation_config,
                n_trials=schedule.n_trials,
                timeout_overall=schedule.timeout_overall,
                tried_algorithms=schedule.tried_algorithms or None,
                train_after_tuning=True,
                warm_start_config=warm,
                enqueue=False,
                keep_test_scores=schedule.auto_deploy,
            )
            runs.run_save(run, tuning_job=job)
            job = tuning_job_run(job_id=job.pk)
            watch.checkpoint()
            if job.status != JobStatus.COMPLETED or job.best_config is None:
                raise RunError(f"Tuning job #{job.pk} failed: {job.error or job.status}")
            configuration = job.best_config
            if job.tuned_model is not None and job.tuned_model.status == JobStatus.COMPLETED:
                trained = job.tuned_model

    # 3. Train on all of the data with the chosen configuration.
    if trained is None:
        with _stage(run, watch, timings, "train"):
            assert configuration is not None
            # After a retune the tuning job's test score of this configuration is the model's.
            known = dict(job.test_metrics) if job is not None and job.test_metrics else None
            trained = trained_model_create(
                configuration=configuration, data=data, enqueue=False, test_metrics=known
            )
            runs.run_save(run, trained_model=trained)
            # With auto-deploy the gate fits this configuration on a holdout anyway: its
            # scores become the model's test metrics instead of a second holdout fit here.
            trained = trained_model_train(
                trained_model_id=trained.pk, evaluate=not _gate_gives_test_metrics(schedule)
            )
            watch.checkpoint()
            if trained.status != JobStatus.COMPLETED:
                raise RunError(
                    f"Training model #{trained.pk} failed: {trained.error or trained.status}"
                )
    model_timings = getattr(trained, "timings", None)
    if model_timings:
        timings["model"] = model_timings
    runs.run_save(run, trained_model=trained, metrics=dict(trained.test_metrics or {}))

    # 4. Gate, then deploy and finish in one transaction.
    if not schedule.auto_deploy:
        runs.run_finish(
            run=run,
            status=RunStatus.COMPLETED,
            timings=timings,
            gate_decision=RetrainingRun.Gate.NOT_REQUESTED,
            gate_report=_report(reason="auto_deploy is off: nothing is deployed."),
        )
    else:
        _gate_and_deploy(run, watch, timings, schedule, data, trained, previous, job)
    try:
        project_retain(project_id=schedule.project_id)
    except Exception:  # retention is housekeeping: never fail a finished run for it
        logger.exception("retention after run %s failed", run.pk)


def _target_slot(schedule: RetrainingSchedule) -> DeploymentSlot | None:
    if schedule.deploy_slot is not None:
        return schedule.deploy_slot
    slots = DeploymentSlot.objects.filter(project_id=schedule.project_id)
    # A running canary's slot is a share of its target, not a slot of its own to deploy to.
    active = list(slots.filter(is_active=True).exclude(pk__in=canary_slot_ids(schedule))[:2])
    if len(active) > 1:
        raise RunError(
            "The project has several active slots and the schedule names no deploy_slot; "
            "choose the slot to update.",
            retryable=False,
        )
    if active:
        return active[0]
    if slots.exists():
        # Reviving or adding a slot next to ones a user switched off would serve traffic they stopped.
        raise RunError(
            "no active slot to deploy to; set deploy_slot on the schedule.", retryable=False
        )
    return None  # no slot at all: a new "auto-deploy" slot (weight 100) is created


def _report(**values: Any) -> dict[str, Any]:
    return {key: values.get(key) for key in GATE_REPORT_KEYS}


def _trained_as(model: TrainedModel) -> tuple[str, dict[str, Any]]:
    """What a model was trained with (the configuration only for models older than that record)."""
    if model.class_name:
        return model.class_name, dict(model.parameters or {})
    return model.configuration.recommender_class_name, dict(model.configuration.parameters_json)


def _shrink_reason(
    schedule: RetrainingSchedule,
    run: RetrainingRun,
    data: TrainingData,
    previous: RetrainingRun | None,
) -> str | None:
    if run.force or previous is None or not previous.data_rows:
        return None
    floor = previous.data_rows * (1.0 - schedule.max_data_shrink)
    if data.row_count >= floor:
        return None
    return (
        f"The data shrank from {previous.data_rows} rows (run #{previous.pk}) to {data.row_count}, "
        f"more than max_data_shrink={schedule.max_data_shrink:g} allows; trigger with force to "
        "deploy anyway."
    )


def _gate_and_deploy(
    run: RetrainingRun,
    watch: _Watch,
    timings: dict[str, Any],
    schedule: RetrainingSchedule,
    data: TrainingData,
    trained: TrainedModel,
    previous: RetrainingRun | None,
    tuned: ParameterTuningJob | None,
) -> None:
    """Score candidate and incumbent fairly (ml.gate), then deploy only if the run is still ours
    and the slot still serves the model the gate compared against."""
    from recotem.ml.gate import gate_compare

    slot = _target_slot(schedule)
    incumbent = slot.trained_model if slot is not None else None
    incumbent_id = incumbent.pk if incumbent is not None else None
    spec = eval_spec_of(schedule.evaluation_config)
    with _stage(run, watch, timings, "gate"):
        candidate = _trained_as(trained)
        compared = _trained_as(incumbent) if incumbent is not None else candidate
        df = read_training_data(data)  # through the storage API: works on S3 too
        report = gate_compare(
            df,
            candidate=candidate,
            incumbent=compared,
            split=split_spec_of(schedule.split_config),
            evaluation=spec,
            tolerance=schedule.gate_tolerance,
            with_candidate_metrics=not trained.test_metrics,
            candidate_scores=_tuned_test_scores(tuned, data, trained),
            **schedule.project.columns,
        )
        del df
        if tuned is not None:  # used or not, they have served their one purpose
            ParameterTuningJob.objects.filter(pk=tuned.pk).update(test_scores=None)
        if report.candidate_metrics and trained_model_record_metrics(
            trained_model_id=trained.pk, test_metrics=report.candidate_metrics
        ):
            runs.run_save(run, metrics=report.candidate_metrics)
        gate = report.as_dict()
        passed = bool(gate.pop("passed"))
        if incumbent is None:
            gate["reason"] = "No model is deployed yet. " + gate["reason"]
        shrink = _shrink_reason(schedule, run, data, previous)
        if shrink is not None:
            passed = False
            gate["reason"] = f"{shrink} {gate['reason']}"
    incumbent_metrics = {"model_id": incumbent_id} if incumbent_id else {}

    def rejected(reason: str | None = None) -> dict[str, Any]:
        if reason:
            gate["reason"] = f"{reason} {gate['reason']}"
        return {
            "gate_decision": RetrainingRun.Gate.REJECTED,
            "gate_report": _report(**gate),
            "incumbent_metrics": incumbent_metrics,
            "timings": timings,
        }

    if not passed:
        runs.run_finish(run=run, status=RunStatus.COMPLETED, **rejected())
        return

    def deploy() -> dict[str, Any]:
        began = time.perf_counter()
        changed_by = f"retraining run #{run.pk}"
        watch.checkpoint()
        _failpoint("deploy")
        if slot is None:
            if DeploymentSlot.objects.filter(project_id=schedule.project_id).exists():
                return rejected("A slot was created while the run trained; not deploying over it.")
            target = slot_create(
                project=schedule.project,
                name="auto-deploy",
                trained_model=trained,
                weight=100,
                changed_by=changed_by,
            )
        else:
            current = DeploymentSlot.objects.select_for_update().get(pk=slot.pk)
            if current.trained_model_id != incumbent_id:
                return rejected(
                    f"Slot '{current.name}' changed during the run (it now serves model "
                    f"#{current.trained_model_id}, the gate compared against #{incumbent_id})."
                )
            # A running canary of the slot is refused in both modes (the rule's one home is
            # deployment's model-change check, which the retraining app registers).
            conflict = slot_model_change_refusal(current)
            if conflict is not None:
                return rejected(conflict)
            if schedule.deploy_mode == RetrainingSchedule.DeployMode.CANARY:
                try:
                    started = canary_start(
                        run=run, schedule=schedule, target=current, trained=trained
                    )
                except CanaryRefused as exc:
                    return rejected(str(exc))
                timings["deploy"] = round(time.perf_counter() - began, 3)
                gate["reason"] = (
                    f"{gate['reason']} Canary: slot '{started.slot.name}' serves "
                    f"{schedule.canary_percent}% of slot '{current.name}''s users until "
                    f"{started.experiment.canary_ends_at:%Y-%m-%d %H:%M} UTC "
                    f"(experiment #{started.experiment.pk})."
                )
                return {
                    "gate_decision": RetrainingRun.Gate.CANARY,
                    "deployed_slot": started.slot,
                    "gate_report": _report(**gate),
                    "incumbent_metrics": incumbent_metrics,
                    "timings": timings,
                }
            target = slot_set_model(slot=current, trained_model=trained, changed_by=changed_by)
        timings["deploy"] = round(time.perf_counter() - began, 3)
        return {
            "gate_decision": RetrainingRun.Gate.DEPLOYED,
            "deployed_slot": target,
            "gate_report": _report(**gate),
            "incumbent_metrics": incumbent_metrics,
            "timings": timings,
        }

    runs.run_save(run, stage="deploy")
    if not runs.run_finish(run=run, status=RunStatus.COMPLETED, on_finish=deploy):
        raise RunFenced(f"run #{run.pk} was ended before it could deploy")


def _tuned_test_scores(
    job: ParameterTuningJob | None, data: TrainingData, trained: TrainedModel
) -> HeldOutScores | None:
    """The tuning job's per-user test scores of the candidate: of this configuration, fitted on
    this data (the gate checks that they are for its own holdout and metric)."""
    if job is None:
        return None
    stored = ParameterTuningJob.objects.filter(
        pk=job.pk, best_config_id=trained.configuration_id, data_id=data.pk
    ).values_list("test_scores", flat=True)
    raw = stored.first()
    if raw is None or trained.data_loc_id != data.pk:
        return None
    from recotem.ml.gate import HeldOutScores  # numpy: the worker's side of this module

    return HeldOutScores.from_bytes(bytes(raw))


def _gate_gives_test_metrics(schedule: RetrainingSchedule) -> bool:
    """Whether the gate will score the candidate on test users (it scores validation users
    when the split has none, and those are no test score)."""
    if not schedule.auto_deploy:
        return False
    spec = split_spec_of(schedule.split_config)
    return (
        (spec.n_test_users or 0) > 0 if spec.n_test_users is not None else spec.test_user_ratio > 0
    )
