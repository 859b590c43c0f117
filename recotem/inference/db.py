"""Synchronous reads (and the one batched write) the inference app runs in worker threads.

Nothing here is called on the request path of a warm process: the app calls these from its
background poller, or once per cold key / model / metadata file, always through an executor.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import close_old_connections, connections
from django.utils import timezone

from recotem.accounts.models import ApiKey
from recotem.core.artifacts import signing_keys
from recotem.core.files import local_file, read_stored
from recotem.core.jobs import JobStatus
from recotem.deployment.models import DeploymentSlot, RoutingVersion
from recotem.experiments import selectors as experiment_selectors
from recotem.experiments import services as experiment_services
from recotem.ml.artifact import load_artifact
from recotem.ml.data import read_table
from recotem.ml.recommend import LoadedModel
from recotem.projects.limits import data_limits
from recotem.projects.models import ItemMetaData, Project
from recotem.training.models import TrainedModel

logger = logging.getLogger("recotem.inference")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: int
    project_id: int
    scopes: frozenset[str]
    expires_ts: float | None  # unix seconds; checked on every request


@dataclass(frozen=True, slots=True)
class ModelMeta:
    id: int
    project_id: int
    completed: bool
    file_name: str


@dataclass(frozen=True, slots=True)
class SlotRow:
    id: int
    project_id: int
    name: str
    trained_model_id: int
    weight: int


def _fresh() -> None:
    # Worker threads keep their connection between calls; drop it if it broke or aged out.
    close_old_connections()


def routing_version() -> int:
    _fresh()
    row = RoutingVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    return int(row or 0)


def active_slots() -> list[SlotRow]:
    """Every active slot with a positive weight (the routing table), one query."""
    _fresh()
    rows = (
        DeploymentSlot.objects.filter(is_active=True, weight__gt=0)
        .order_by("id")
        .values_list("id", "project_id", "name", "trained_model_id", "weight")
    )
    return [SlotRow(*row) for row in rows]


def project_salts(project_ids: list[int]) -> dict[int, str]:
    """Each project's assignment salt (sticky slot assignment), one query."""
    _fresh()
    rows = Project.objects.filter(pk__in=project_ids).values_list("id", "assignment_salt")
    return dict(rows)


def running_arms() -> dict[int, experiment_selectors.SlotArm]:
    """Slots that are arms of a running experiment, one query."""
    _fresh()
    return experiment_selectors.running_arms()


def _keep() -> None:
    """Keep this thread's connection from batch to batch, dropping it only after an error left
    it unusable. ``_fresh`` would close it every time (settings use conn_max_age=0, right for
    Django's request threads), and a new PostgreSQL connection per batch costs more than the
    batch's insert. The event pool's threads are few and fixed, so connections stay bounded."""
    conn = connections["default"]
    if conn.connection is not None and conn.errors_occurred:
        if conn.is_usable():
            conn.errors_occurred = False
        else:
            conn.close()


def store_events(project_id: int, events: list[dict[str, Any]]) -> tuple[int, int]:
    """One batch of feedback events, committed: ``(accepted, duplicates)``; InvalidInput on
    a bad event, experiments.services.ProjectGone when the project was deleted (nothing
    stored either way)."""
    _keep()
    return experiment_services.events_store(project_id, events)


def model_metas(model_ids: list[int]) -> dict[int, ModelMeta]:
    _fresh()
    rows = TrainedModel.objects.filter(pk__in=model_ids).values_list(
        "id", "project_id", "status", "file"
    )
    return {
        mid: ModelMeta(mid, pid, status == JobStatus.COMPLETED and bool(file), file or "")
        for mid, pid, status, file in rows
    }


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def fetch_keys(hashes: list[str]) -> dict[str, KeyEntry | None]:
    """Usable keys by hash; revoked or missing hashes map to None. One query per 500 hashes."""
    _fresh()
    found: dict[str, KeyEntry | None] = dict.fromkeys(hashes)
    for begin in range(0, len(hashes), 500):
        chunk = hashes[begin : begin + 500]
        rows = ApiKey.objects.filter(key_hash__in=chunk, revoked_at__isnull=True).values_list(
            "key_hash", "id", "project_id", "scopes", "expires_at"
        )
        for key_hash, kid, pid, scopes, expires_at in rows:
            found[key_hash] = KeyEntry(kid, pid, frozenset(scopes or ()), _ts(expires_at))
    return found


def rehash_key(key_id: int, old_hash: str, new_hash: str) -> None:
    """Store a key's hash under the current SECRET_KEY (it matched under a fallback)."""
    _fresh()
    ApiKey.objects.filter(pk=key_id, key_hash=old_hash).update(key_hash=new_hash)


def touch_keys(key_ids: list[int]) -> None:
    """Batched `last_used_at` for keys seen since the last flush (an UPDATE, so no signals)."""

    if not key_ids:
        return
    _fresh()
    ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())


def load_model(meta: ModelMeta) -> LoadedModel:
    """Read the artifact through the storage API (and this machine's cache on S3), verify its
    signature; each user's top-K is computed on first request, not here."""
    _fresh()
    start = time.perf_counter()
    payload = read_stored(meta.file_name)
    _, keys = signing_keys()
    loaded = load_artifact(payload, keys=keys)
    logger.info(
        "loaded model #%s (%s, %d users, %d items) in %.2f s",
        meta.id,
        loaded.class_name,
        len(loaded.user_ids),
        len(loaded.item_ids),
        time.perf_counter() - start,
    )
    return loaded


@dataclass(frozen=True, slots=True)
class ItemMetadata:
    id: int | None
    columns: tuple[str, ...]
    rows: dict[str, dict[str, Any]]


def latest_item_metadata_id(project_id: int) -> int | None:
    _fresh()
    return (
        ItemMetaData.objects.filter(project_id=project_id)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


def _json_safe(value: Any) -> str | bool | int | float | None:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    return str(value)


def load_item_metadata(project_id: int) -> ItemMetadata:
    """The project's latest item metadata as {item_id: {column: value}} (empty if none).

    Read with the same limits as an upload (``recotem.projects.limits``): a file stored before
    the limits were lowered raises DataLimitExceeded instead of filling the process.
    """
    _fresh()
    meta = ItemMetaData.objects.filter(project_id=project_id).order_by("-id").first()
    if meta is None:
        return ItemMetadata(None, (), {})
    item_column = Project.objects.values_list("item_column", flat=True).get(pk=project_id)
    with local_file(meta.file) as path:
        df = read_table(
            path,
            required_columns=[item_column],
            string_columns=[item_column],
            original_name=meta.original_name,
            all_columns=True,
            **data_limits(path, meta.original_name),
        )
    columns = tuple(str(c) for c in df.columns if c != item_column)
    rows: dict[str, dict[str, Any]] = {}
    for record in df.to_dict(orient="records"):
        item = record.pop(item_column)
        if item is not None:
            rows[str(item)] = {str(k): _json_safe(v) for k, v in record.items()}
    return ItemMetadata(meta.id, columns, rows)
