"""Writes for model configurations and trained models: create, fit (in a worker), load artifacts.

A model is fitted synchronously by `trained_model_train` (the `train_model` task calls it); its
artifact is signed (keys: `recotem.core.artifacts`) and written through the storage API.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import ProtectedError, RestrictedError
from django.db.models.functions import Now

from recotem.core import jobs
from recotem.core.artifacts import signing_keys
from recotem.core.exceptions import ApplicationError
from recotem.core.files import delete_stored_name, read_stored
from recotem.core.jobs import Heartbeat, JobStatus, task_log, transition
from recotem.core.ownership import check_same_project
from recotem.ml.artifact import ArtifactError
from recotem.ml.timing import PhaseTimer, describe
from recotem.projects.models import Project, TrainingData
from recotem.projects.selectors import read_training_data
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.training.outbox import TRAIN_OUTBOX
from recotem.training.validation import validate_model_configuration

if TYPE_CHECKING:
    import pandas as pd

    from recotem.ml.recommend import LoadedModel

logger = logging.getLogger(__name__)

# --- create / train ---------------------------------------------------------------------------


def model_configuration_create(
    *,
    project: Project,
    name: str,
    recommender_class_name: str,
    parameters_json: dict[str, Any],
    tuning_job_id: int | None = None,
    rename_on_clash: bool = False,
) -> ModelConfiguration:
    """Validate and store a configuration. With ``rename_on_clash`` a taken name gets a suffix
    (" (2)", " (3)", ...) instead of an error: what a tuning job wants for "… best"."""
    if rename_on_clash:
        base, n = name, 1
        while ModelConfiguration.objects.filter(project=project, name=name).exists():
            n += 1
            name = f"{base} ({n})"
    cleaned = validate_model_configuration(
        project=project,
        name=name,
        recommender_class_name=recommender_class_name,
        parameters_json=parameters_json,
    )
    return ModelConfiguration.objects.create(
        project=project, name=name, tuning_job_id=tuning_job_id, **cleaned
    )


def trained_model_create(
    *,
    configuration: ModelConfiguration,
    data: TrainingData,
    enqueue: bool = True,
    test_metrics: dict[str, float] | None = None,
) -> TrainedModel:
    """Create a PENDING model; the worker fits it (`recotem.training.tasks.train_model`).

    ``test_metrics`` already known (a tuning job's honest test score) are kept instead of a
    fresh holdout. The task is sent on commit so a worker never looks for a row that is not
    there yet.
    """
    check_same_project(configuration.project_id, data_loc=data)
    model = TrainedModel.objects.create(
        project_id=configuration.project_id,
        configuration=configuration,
        data_loc=data,
        test_metrics=test_metrics or {},
        send_pending=enqueue,
    )
    if enqueue:
        TRAIN_OUTBOX.send_on_commit(model.pk)
    return model


def _holdout_metrics(df: pd.DataFrame, model: TrainedModel, timer: PhaseTimer) -> dict[str, float]:
    """Score the configuration on held-out test users of the default split (ndcg@10 family).

    Used when nothing better is known (a manual or scheduled training): a model trained by a
    tuning job already carries the test metrics of the job's own split. Phases: ``split``, then
    ``evaluate`` (the fit on the holdout's training part and its scoring).
    """
    from recotem.ml.evaluation import EvalSpec, make_evaluator, metrics_of
    from recotem.ml.matrix import InteractionMatrix
    from recotem.ml.split import split_interactions, split_spec_from_config
    from recotem.ml.training import fit_matrix

    project = model.project
    with timer.phase("split"):
        split = split_interactions(df, split_spec_from_config(), **project.columns)
    if split.test_train is None or split.test_truth is None:
        return {}
    with timer.phase("evaluate"):
        fitted = fit_matrix(
            InteractionMatrix(X=split.test_train, user_ids=split.user_ids, item_ids=split.item_ids),
            model.class_name,
            model.parameters,
        )
        evaluator = make_evaluator(split.test_truth, offset=split.test_offset, spec=EvalSpec())
        return metrics_of(evaluator, fitted.recommender)


def trained_model_train(*, trained_model_id: int, evaluate: bool = True) -> TrainedModel:
    """Fit a model synchronously: PENDING -> RUNNING -> COMPLETED | FAILED.

    Steps: claim the row (PENDING only); read the data; fit on all interactions; write the
    signed artifact through the storage API; record size, version, time, fingerprint; then
    compute holdout test metrics unless already set (a tuning job sets them from its own split)
    or ``evaluate`` is off (a retraining run's gate fits the same configuration on a holdout
    anyway and records its scores with :func:`trained_model_record_metrics`).
    Only one caller claims a PENDING row: a duplicated message, or a RUNNING row whose worker
    died (the reaper fails those), is returned as it is without work. Any error ends in FAILED.
    A Celery soft time limit is recorded as FAILED and re-raised so the caller stops too.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    claimed = transition(
        TrainedModel,
        trained_model_id,
        expected=JobStatus.PENDING,
        status=JobStatus.RUNNING,
        started_at=Now(),
        heartbeat_at=Now(),
        error="",
    )
    model = TrainedModel.objects.select_related("configuration", "data_loc", "project").get(
        pk=trained_model_id
    )
    if not claimed:
        return model
    # What this model is, fixed now: the configuration may be edited in place later.
    model.class_name = model.configuration.recommender_class_name
    model.parameters = dict(model.configuration.parameters_json or {})
    TrainedModel.objects.filter(pk=model.pk).update(
        class_name=model.class_name, parameters=model.parameters
    )
    # Everything after the claim is inside the try: a time limit that strikes even while the
    # first log line is written still ends the row FAILED instead of leaving it RUNNING.
    try:
        task_log(
            project_id=model.project_id,
            trained_model_id=model.pk,
            contents=f"Training {model.class_name} {model.parameters} on data #{model.data_loc_id}.",
        )
        with Heartbeat.of_row(TrainedModel, trained_model_id, name=f"model-{trained_model_id}"):
            _train(model, evaluate=evaluate)
    except SoftTimeLimitExceeded:
        _fail_model(
            model, "time limit: the task's time limit was reached during training.", tb=False
        )
        raise
    except Exception as exc:  # recorded on the row: the user must see why, the worker goes on
        logger.exception("training model %s failed", model.pk)
        _fail_model(model, f"{type(exc).__name__}: {exc}", tb=True)
    try:
        model.refresh_from_db()
    except TrainedModel.DoesNotExist:  # deleted while it trained: report, never resurrect
        model.status, model.error = JobStatus.FAILED, "The model was deleted while it trained."
    return model


def trained_model_fail(*, trained_model_id: int, message: str) -> bool:
    """RUNNING → FAILED with ``message`` (a dead or over-time run's model); False if it had ended."""
    model = TrainedModel.objects.filter(pk=trained_model_id).only("pk", "project_id").first()
    if model is None:
        return False
    return _fail_model(model, message, tb=False)


def trained_models_reap(*, now: datetime, stale_after: timedelta) -> int:
    """RUNNING models without a heartbeat for ``stale_after`` → FAILED "worker lost"; the count."""
    failed = jobs.reap_stale(TrainedModel, now=now, stale_after=stale_after)
    for pk, project_id, message in failed:
        task_log(
            project_id=project_id,
            trained_model_id=pk,
            level="ERROR",
            contents=f"TrainedModel #{pk}: {message}",
        )
    return len(failed)


def _fail_model(model: TrainedModel, message: str, *, tb: bool) -> bool:
    if transition(
        TrainedModel,
        model.pk,
        expected=JobStatus.RUNNING,
        status=JobStatus.FAILED,
        error=message,
        completed_at=Now(),
    ):
        detail = f"\n{traceback.format_exc(limit=5)}" if tb else ""
        task_log(
            project_id=model.project_id,
            trained_model_id=model.pk,
            level="ERROR",
            contents=f"Training failed: {message}{detail}",
        )
        return True
    return False


def trained_model_record_metrics(*, trained_model_id: int, test_metrics: dict[str, float]) -> bool:
    """Give a COMPLETED model without test metrics the ones measured elsewhere (the gate)."""
    updated = TrainedModel.objects.filter(
        pk=trained_model_id, status=JobStatus.COMPLETED, test_metrics={}
    ).update(test_metrics=test_metrics)
    return bool(updated)


def _train(model: TrainedModel, *, evaluate: bool = True) -> None:
    """Read, fit on all interactions, save; then, if no metrics came with the model, evaluate.

    The holdout evaluation is a second fit of the same size, so it runs *after* the model is
    COMPLETED: the model is servable (and deployable) as soon as its own fit is stored, and its
    ``test_metrics`` follow when the holdout is scored (the call returns after both). Timings of
    every phase are stored on the row and logged.
    """
    from recotem.ml.artifact import dump_artifact
    from recotem.ml.data import fingerprint
    from recotem.ml.training import train_model

    project = model.project
    timer = PhaseTimer()
    with timer.phase("read"):
        df = read_training_data(model.data_loc)
        columns = [c for c in (project.user_column, project.item_column, project.time_column) if c]
        data_fingerprint = model.data_loc.fingerprint or fingerprint(df, columns)
    test_metrics = dict(model.test_metrics or {})
    start = time.perf_counter()
    fitted = train_model(
        df,
        model.class_name,
        model.parameters,
        user_column=project.user_column,
        item_column=project.item_column,
        timer=timer,
    )
    with timer.phase("save"):
        key_id, keys = signing_keys()
        payload = dump_artifact(
            fitted,
            key=keys[key_id],
            key_id=key_id,
            fingerprint=data_fingerprint,
            metrics=test_metrics,
        )
        training_time = time.perf_counter() - start
        stored = _store_artifact(
            model,
            payload,
            test_metrics=test_metrics,
            irspack_version=fitted.irspack_version,
            training_time=training_time,
            data_fingerprint=data_fingerprint,
        )
    size = len(payload)
    del fitted, payload
    if not stored:
        return
    TrainedModel.objects.filter(pk=model.pk).update(timings=timer.as_dict())
    if not test_metrics and evaluate:
        try:
            test_metrics = _holdout_metrics(df, model, timer)
        except ValueError as exc:  # too little data for a holdout: the model stands, say why
            task_log(
                project_id=project.pk,
                trained_model_id=model.pk,
                level="WARNING",
                contents=f"No holdout evaluation: {exc}",
            )
        # Only a model still COMPLETED (not deleted meanwhile) takes its metrics.
        TrainedModel.objects.filter(pk=model.pk, status=JobStatus.COMPLETED).update(
            test_metrics=test_metrics, timings=timer.as_dict()
        )
    del df
    metrics_note = test_metrics if test_metrics or evaluate else "left to the retraining gate"
    task_log(
        project_id=project.pk,
        trained_model_id=model.pk,
        contents=f"Trained in {training_time:.2f} s; artifact {size} bytes; "
        f"test metrics {metrics_note}. Timings: {describe(timer.as_dict())}.",
    )


def _store_artifact(model: TrainedModel, payload: bytes, **fields: Any) -> bool:
    """Write the artifact, then mark the model COMPLETED only if it is still ours (RUNNING).

    When the row was deleted mid-training, or the reaper already failed it, no row points at the
    file: it is deleted again instead of being left orphaned in storage.
    """
    model.file.save(f"model-{model.pk}.rctm", ContentFile(payload), save=False)
    if not transition(
        TrainedModel,
        model.pk,
        expected=JobStatus.RUNNING,
        status=JobStatus.COMPLETED,
        file=model.file.name,
        filesize=len(payload),
        completed_at=Now(),
        error="",
        **fields,
    ):
        logger.warning(
            "model %s was deleted or ended during training; discarding its artifact", model.pk
        )
        assert model.file.name is not None  # the save above named it
        model.file.storage.delete(model.file.name)
        model.file.name = ""
        return False
    return True


def trained_model_delete(*, trained_model: TrainedModel) -> None:
    """Delete the row, then its artifact (a row without a file would be worse than a stray file)."""
    name = trained_model.file.name if trained_model.file else ""
    storage = trained_model.file.storage
    trained_model.delete()
    _cache_forget(trained_model.pk)
    if name:
        delete_stored_name(storage, name)


# --- loading ----------------------------------------------------------------------------------


class ArtifactRefused(ApplicationError, ArtifactError):
    """A stored artifact failed verification: callers may catch it as either kind."""

    def __init__(self, message: str) -> None:
        ApplicationError.__init__(self, message, field="file", status=409)


_CACHE_SIZE = 4
_cache: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def _cache_forget(model_id: int | None) -> None:
    with _cache_lock:
        for key in [k for k in _cache if k[0] == model_id]:
            del _cache[key]


def load_trained_model(trained_model: TrainedModel) -> LoadedModel:
    """Read and verify the artifact (signature checked before anything is unpickled).

    Raises ApplicationError (400) if the model is not COMPLETED, and ArtifactRefused (both an
    ArtifactError and a 409 ApplicationError) if the file is tampered, truncated or signed with
    an unknown key. The last few verified models stay in memory (keyed by id and file name),
    so repeated sample recommendations are cheap.
    """
    from recotem.ml.artifact import load_artifact

    if trained_model.status != JobStatus.COMPLETED or not trained_model.file:
        raise ApplicationError(
            f"Model #{trained_model.pk} is {trained_model.status}, not COMPLETED; it has no artifact yet.",
            field="status",
        )
    cache_key = (
        int(trained_model.pk),
        str(trained_model.file.name),
        trained_model.filesize,
        trained_model.completed_at,
    )
    with _cache_lock:
        if cache_key in _cache:
            _cache.move_to_end(cache_key)
            return _cache[cache_key]
    # Through this machine's cache on S3; the bytes are verified below, cached or not.
    payload = read_stored(str(trained_model.file.name), trained_model.file.storage)
    _, keys = signing_keys()
    try:
        loaded = load_artifact(payload, keys=keys)
    except ArtifactError as exc:
        # Never serve (or unpickle) a model whose bytes we cannot prove are ours.
        raise ArtifactRefused(
            f"The stored artifact of model #{trained_model.pk} was refused: {exc}"
        ) from exc
    with _cache_lock:
        _cache[cache_key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def sample_recommendation(
    *, trained_model: TrainedModel, user_id: str, cutoff: int
) -> dict[str, Any]:
    """Top-`cutoff` items for a known user, excluding items the user already interacted with."""
    loaded = load_trained_model(trained_model)
    try:
        items = loaded.recommend(user_id, cutoff=cutoff)
    except KeyError:
        raise ApplicationError(
            f"User {user_id!r} is not in the data model #{trained_model.pk} was trained on.",
            field="user_id",
            status=404,
        ) from None
    return {"user_id": user_id, "items": [{"item_id": i, "score": float(s)} for i, s in items]}


def models_retain(*, project_id: int, keep: int, protected: set[int]) -> list[int]:
    """Delete finished models beyond the newest ``keep``, except the ``protected`` ids.

    The caller knows what must stay (what slots serve and can roll back to). Running or pending
    models are never touched; a model still referenced elsewhere (RESTRICT) is skipped. Returns
    the deleted ids; their artifacts go too.
    """
    finished = TrainedModel.objects.filter(
        project_id=project_id, status__in=[JobStatus.COMPLETED, JobStatus.FAILED]
    ).order_by("-id")
    deleted: list[int] = []
    for model in finished[keep:]:
        if model.pk in protected:
            continue
        model_id = model.pk
        try:
            with transaction.atomic():
                trained_model_delete(trained_model=model)
        except (ProtectedError, RestrictedError):
            continue
        except OSError:
            logger.warning("could not delete the artifact of model %s", model_id)
        deleted.append(model_id)
    return deleted


@dataclass(frozen=True)
class ResignReport:
    resigned: int
    current: int
    failed: list[tuple[int, str]]


def trained_models_resign() -> ResignReport:
    """Re-sign every stored artifact with the current SECRET_KEY's artifact key.

    For each model with a file: verify it under the current key and the fallbacks
    (RECOTEM_SECRET_KEY_FALLBACKS), write the re-signed bytes as a new file, point the row at
    it, then delete the old file; artifacts already under the current key are left alone.
    The payload is copied, never unpickled. After this, the old key can leave the fallbacks
    as far as models are concerned. Failures (a missing file, a signature no key verifies)
    are reported per model and leave that model as it was.
    """
    from recotem.ml.artifact import read_key_id, resign_artifact

    key_id, keys = signing_keys()
    resigned = current = 0
    failed: list[tuple[int, str]] = []
    for model in TrainedModel.objects.exclude(file="").exclude(file__isnull=True).order_by("pk"):
        try:
            with model.file.open("rb") as fh:
                data = fh.read()
            if read_key_id(data) == key_id:
                current += 1
                continue
            fresh = resign_artifact(data, keys=keys, key=keys[key_id], key_id=key_id)
        except (ArtifactError, OSError) as exc:
            failed.append((model.pk, str(exc)))
            continue
        old_name = str(model.file.name)
        storage = model.file.storage
        new_name = storage.save(f"model-{model.pk}.rctm", ContentFile(fresh))
        updated = TrainedModel.objects.filter(pk=model.pk, file=old_name).update(file=new_name)
        if updated:
            delete_stored_name(storage, old_name)
            _cache_forget(model.pk)
            resigned += 1
        else:  # the row changed meanwhile (deleted, retrained): keep its file, drop ours
            storage.delete(new_name)
            failed.append((model.pk, "the model changed while it was being re-signed"))
    return ResignReport(resigned=resigned, current=current, failed=failed)
