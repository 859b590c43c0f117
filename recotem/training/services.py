"""Writes for trained models: create, fit (synchronously, in a worker), sign and load artifacts.

Artifacts are signed with HMAC-SHA256 (format: recotem/ml/artifact.py). The key is derived from
SECRET_KEY rather than being SECRET_KEY itself, so a leaked artifact key would not let anyone
forge sessions or JWTs; the key id is a short hash of the derived key, so a model signed under
an older SECRET_KEY (kept in SECRET_KEY_FALLBACKS during a rotation) still loads.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from recotem.core.exceptions import ApplicationError
from recotem.ml.artifact import ArtifactError
from recotem.projects.models import TrainingData
from recotem.training.heartbeat import Heartbeat
from recotem.training.models import TaskLog, TrainedModel
from recotem.tuning.models import JobStatus, ModelConfiguration

if TYPE_CHECKING:
    from recotem.ml.recommend import LoadedModel
    from recotem.tuning.models import ParameterTuningJob

logger = logging.getLogger(__name__)

_KEY_PURPOSE = b"recotem.artifact.v1"


# --- helpers shared with tuning --------------------------------------------------------------


def current_task_id() -> str:
    """The Celery task id when called inside a worker, else "sync" (tests, shell)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None) if current_task else None
    return str(task_id) if task_id else "sync"


def task_log(
    *,
    project_id: int,
    contents: str,
    level: str = "INFO",
    tuning_job: ParameterTuningJob | None = None,
    trained_model: TrainedModel | None = None,
) -> None:
    """Append one TaskLog row (what the user sees under "logs") and mirror it to the logger."""
    logger.log(logging.getLevelName(level) if isinstance(level, str) else level, contents)
    TaskLog.objects.create(
        project_id=project_id,
        task=current_task_id(),
        tuning_job=tuning_job,
        trained_model=trained_model,
        level=level,
        contents=contents,
    )


@contextmanager
def local_file(field: FieldFile) -> Iterator[Path]:
    """A local path for a stored file: the file itself on local storage, else a temp copy (S3)."""
    try:
        path = field.path
    except NotImplementedError:
        path = None
    if path is not None:
        yield Path(path)
        return
    suffix = "".join(Path(field.name).suffixes)
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, field.open("rb") as src:
            shutil.copyfileobj(src, out)
        yield Path(name)
    finally:
        os.unlink(name)


def read_training_data(data: TrainingData) -> pd.DataFrame:
    """The interactions of a TrainingData snapshot, with the project's columns."""
    from recotem.ml.data import read_interactions

    with local_file(data.file) as path:
        return read_interactions(path, original_name=data.original_name, **data.project.columns)


# --- signing keys -----------------------------------------------------------------------------


def _derive(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def artifact_signing_keys() -> tuple[str, dict[str, bytes]]:
    """(current key id, {key id: key}) derived from SECRET_KEY and SECRET_KEY_FALLBACKS."""
    current = _derive(settings.SECRET_KEY)
    keys = {_key_id(current): current}
    for old in getattr(settings, "SECRET_KEY_FALLBACKS", []) or []:
        derived = _derive(old)
        keys.setdefault(_key_id(derived), derived)
    return _key_id(current), keys


# --- create / train ---------------------------------------------------------------------------


def trained_model_create(
    *, configuration: ModelConfiguration, data: TrainingData, enqueue: bool = True
) -> TrainedModel:
    """Create a PENDING model; the worker fits it (`recotem.training.tasks.train_model`).

    The task is sent on commit so a worker never looks for a row that is not there yet.
    """
    if configuration.project_id != data.project_id:
        raise ApplicationError("Must belong to the same project as the configuration.", field="data_loc")
    model = TrainedModel.objects.create(
        project_id=configuration.project_id, configuration=configuration, data_loc=data
    )
    if enqueue:
        from recotem.training.tasks import train_model

        model_id = model.pk
        transaction.on_commit(lambda: train_model.delay(model_id))
    return model


def _holdout_metrics(df: pd.DataFrame, model: TrainedModel) -> dict[str, float]:
    """Score the configuration on held-out test users (default RG split, ndcg@10 family).

    Used when nothing better is known (a manual or scheduled training): a model trained by a
    tuning job already carries the test metrics of the job's own split.
    """
    from recotem.ml.evaluation import EvalSpec, make_evaluator, metrics_of
    from recotem.ml.matrix import InteractionMatrix
    from recotem.ml.split import SplitSpec, split_interactions
    from recotem.ml.training import fit_matrix

    project = model.project
    split = split_interactions(
        df, SplitSpec(scheme="RG", test_user_ratio=0.1, random_seed=42), **project.columns
    )
    if split.test_train is None or split.test_truth is None:
        return {}
    fitted = fit_matrix(
        InteractionMatrix(X=split.test_train, user_ids=split.user_ids, item_ids=split.item_ids),
        model.configuration.recommender_class_name,
        model.configuration.parameters_json,
    )
    evaluator = make_evaluator(split.test_truth, offset=split.test_offset, spec=EvalSpec())
    return metrics_of(evaluator, fitted.recommender)


def trained_model_heartbeat(*, trained_model_id: int) -> bool:
    """Touch a RUNNING model's heartbeat; False once it is no longer RUNNING (or gone)."""
    return bool(
        TrainedModel.objects.filter(pk=trained_model_id, status=JobStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )
    )


def trained_model_train(*, trained_model_id: int) -> TrainedModel:
    """Fit a model synchronously: PENDING -> RUNNING -> COMPLETED | FAILED.

    Steps: claim the row (PENDING only); read the data; compute holdout test metrics unless
    already set (a tuning job sets them from its own split); fit on all interactions; write the
    signed artifact through the storage API; record size, metrics, version, time, fingerprint.
    Only one caller claims a PENDING row: a duplicated message, or a RUNNING row whose worker
    died (the reaper fails those), is returned as it is without work. Any error ends in FAILED.
    A Celery soft time limit is recorded as FAILED and re-raised so the caller stops too.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    now = timezone.now()
    claimed = TrainedModel.objects.filter(pk=trained_model_id, status=JobStatus.PENDING).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, error=""
    )
    model = TrainedModel.objects.select_related("configuration", "data_loc", "project").get(
        pk=trained_model_id
    )
    if claimed != 1:
        return model
    task_log(project_id=model.project_id, trained_model=model,
             contents=f"Training {model.configuration.recommender_class_name} on data #{model.data_loc_id}.")
    touch = lambda: trained_model_heartbeat(trained_model_id=trained_model_id)  # noqa: E731
    try:
        with Heartbeat(touch, name=f"model-{trained_model_id}"):
            _train(model)
    except SoftTimeLimitExceeded:
        _fail_model(model, "time limit: the task's time limit was reached during training.", tb=False)
        raise
    except Exception as exc:  # recorded on the row: the user must see why, the worker goes on
        logger.exception("training model %s failed", model.pk)
        _fail_model(model, f"{type(exc).__name__}: {exc}", tb=True)
    try:
        model.refresh_from_db()
    except TrainedModel.DoesNotExist:  # deleted while it trained: report, never resurrect
        model.status, model.error = JobStatus.FAILED, "The model was deleted while it trained."
    return model


def _fail_model(model: TrainedModel, message: str, *, tb: bool) -> None:
    updated = TrainedModel.objects.filter(pk=model.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.FAILED, error=message, completed_at=timezone.now()
    )
    if updated:
        detail = f"\n{traceback.format_exc(limit=5)}" if tb else ""
        task_log(project_id=model.project_id, trained_model=model, level="ERROR",
                 contents=f"Training failed: {message}{detail}")


def _train(model: TrainedModel) -> None:
    from recotem.ml.artifact import dump_artifact
    from recotem.ml.data import fingerprint
    from recotem.ml.training import train_model

    project = model.project
    df = read_training_data(model.data_loc)
    columns = [c for c in project.columns.values() if c]
    data_fingerprint = model.data_loc.fingerprint or fingerprint(df, columns)
    test_metrics = dict(model.test_metrics or {})
    if not test_metrics:
        try:
            test_metrics = _holdout_metrics(df, model)
        except ValueError as exc:  # too little data for a holdout: train anyway, say why
            task_log(project_id=project.pk, trained_model=model, level="WARNING",
                     contents=f"No holdout evaluation: {exc}")
    start = time.perf_counter()
    fitted = train_model(
        df,
        model.configuration.recommender_class_name,
        model.configuration.parameters_json,
        user_column=project.user_column,
        item_column=project.item_column,
    )
    del df
    key_id, keys = artifact_signing_keys()
    payload = dump_artifact(
        fitted, key=keys[key_id], key_id=key_id, fingerprint=data_fingerprint, metrics=test_metrics
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
    if stored:
        task_log(project_id=project.pk, trained_model=model,
                 contents=f"Trained in {training_time:.2f} s; artifact {len(payload)} bytes; "
                          f"test metrics {test_metrics}.")


def _store_artifact(model: TrainedModel, payload: bytes, **fields: Any) -> bool:
    """Write the artifact, then mark the model COMPLETED only if it is still ours (RUNNING).

    When the row was deleted mid-training, or the reaper already failed it, no row points at the
    file: it is deleted again instead of being left orphaned in storage.
    """
    model.file.save(f"model-{model.pk}.rctm", ContentFile(payload), save=False)
    updated = TrainedModel.objects.filter(pk=model.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.COMPLETED,
        file=model.file.name,
        filesize=len(payload),
        completed_at=timezone.now(),
        error="",
        **fields,
    )
    if updated != 1:
        logger.warning("model %s was deleted or ended during training; discarding its artifact", model.pk)
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
        storage.delete(name)


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
    cache_key = (int(trained_model.pk), str(trained_model.file.name), trained_model.filesize,
                 trained_model.completed_at)
    with _cache_lock:
        if cache_key in _cache:
            _cache.move_to_end(cache_key)
            return _cache[cache_key]
    with trained_model.file.open("rb") as fh:
        payload = fh.read()
    _, keys = artifact_signing_keys()
    try:
        loaded = load_artifact(payload, keys=keys)
    except ArtifactError as exc:
        # Never serve (or unpickle) a model whose bytes we cannot prove are ours.
        raise ArtifactRefused(f"The stored artifact of model #{trained_model.pk} was refused: {exc}") from exc
    with _cache_lock:
        _cache[cache_key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def sample_recommendation(*, trained_model: TrainedModel, user_id: str, cutoff: int) -> dict[str, Any]:
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
