"""Writes and computations of the online loop: storing feedback events, running experiments.

Events arrive in batches through ``POST /inference/events`` (recotem.inference), which calls
:func:`events_store` in a worker thread; experiments are driven by the API
(recotem.experiments.api) and by canary deploys (retraining).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from recotem.core.artifacts import request_tokens
from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import transition
from recotem.core.ownership import check_same_project
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import bump_routing_version, slots_promote
from recotem.experiments.models import Event, Experiment
from recotem.experiments.validation import (
    IMPRESSION,
    CleanEvent,
    clean_events,
    experiment_errors,
)
from recotem.projects.models import Project

_EVENT_COLUMNS = (
    "project_id",
    "event_type",
    "user_id",
    "item_id",
    "timestamp",
    "value",
    "event_id",
    "slot_id",
    "model_id",
    "experiment_id",
    "arm",
    "received_at",
)


class ProjectGone(Exception):
    """The events' project was deleted (with its API keys) after the key was checked."""


def events_store(project: Project | int, raw_events: list[dict[str, Any]]) -> tuple[int, int]:
    """Validate and store one batch of events; ``(accepted, duplicates)`` once committed.

    Steps: validate every event (InvalidInput with ``events[i].field`` paths, nothing stored);
    decode each ``request_id`` into slot / model / experiment / arm; one INSERT for the batch
    (``json_to_recordset`` on PostgreSQL, multi-row VALUES elsewhere) with ``ON CONFLICT DO
    NOTHING`` when any event has an ``event_id``; its row count is the number stored. An ``event_id`` already stored for the project — by an earlier request or
    earlier in the same batch — is a duplicate and is not stored again, which makes a retried
    batch idempotent. SQL cost: one statement, committed before this returns (autocommit).
    """
    project_id = project if isinstance(project, int) else project.pk
    now = timezone.now()
    events = clean_events(raw_events, project_id=project_id, tokens=request_tokens(), now=now)
    insert = _insert_postgresql if connection.vendor == "postgresql" else _insert_values
    try:
        inserted = insert(project_id, events, now)
    except IntegrityError:
        # The project is the batch's only foreign key (event_id conflicts are skipped): it was
        # deleted after the caller's key was checked (the inference process caches keys).
        if Project.objects.filter(pk=project_id).exists():
            raise
        raise ProjectGone(f"Project #{project_id} no longer exists.") from None
    return inserted, len(events) - inserted


def _columns(project_id: int, events: list[CleanEvent], now: datetime) -> list[list[Any]]:
    """The batch column by column, in ``_EVENT_COLUMNS`` order."""
    n = len(events)
    by = [e.served_by for e in events]
    return [
        [project_id] * n,
        [e.event_type for e in events],
        [e.user_id for e in events],
        [e.item_id for e in events],
        [e.timestamp for e in events],
        [e.value for e in events],
        [e.event_id for e in events],
        [(b.slot_id or None) if b else None for b in by],
        [(b.model_id or None) if b else None for b in by],
        [(b.experiment_id or None) if b else None for b in by],
        [b.arm if b else "" for b in by],
        [now] * n,
    ]


def _on_conflict(events: list[CleanEvent]) -> str:
    """``ON CONFLICT DO NOTHING`` when an event carries an ``event_id`` (the only column that
    can conflict); without one, a plain INSERT spares the server its speculative insertion
    (about a fifth of the statement's time, measured)."""
    return " ON CONFLICT DO NOTHING" if any(e.event_id is not None for e in events) else ""


def _insert_postgresql(project_id: int, events: list[CleanEvent], now: datetime) -> int:
    """One ``INSERT ... SELECT FROM json_to_recordset(batch) ON CONFLICT DO NOTHING``.

    The batch travels as one JSON document (orjson, in C) that the server unpacks: the
    statement text and its three parameters are the same for every batch size, and nothing is
    adapted value by value in Python (per-value adaptation of 6,000 parameters, or of twelve
    arrays, cost more than the insert itself). The row count is the number of rows stored.
    """
    rows = [
        {
            "t": e.event_type,
            "u": e.user_id,
            "i": e.item_id,
            # Epoch seconds: the server converts a float several times faster than ISO text.
            "s": e.timestamp.timestamp(),
            "v": e.value,
            "e": e.event_id,
            "sl": (e.served_by.slot_id or None) if e.served_by else None,
            "m": (e.served_by.model_id or None) if e.served_by else None,
            "x": (e.served_by.experiment_id or None) if e.served_by else None,
            "a": e.served_by.arm if e.served_by else "",
        }
        for e in events
    ]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(Event._meta.db_table)} "
        f"({','.join(quote(c) for c in _EVENT_COLUMNS)}) "
        "SELECT %s, r.t, r.u, r.i, to_timestamp(r.s), r.v, r.e, r.sl, r.m, r.x, r.a, %s "
        "FROM json_to_recordset(%s::json) AS r(t varchar, u varchar, i varchar, "
        "s float8, v float8, e varchar, sl bigint, m bigint, x bigint, a varchar)"
        + _on_conflict(events)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [project_id, now, orjson.dumps(rows).decode()])
        return int(cursor.rowcount)


def _insert_values(project_id: int, events: list[CleanEvent], now: datetime) -> int:
    """One multi-row ``INSERT ... VALUES ... ON CONFLICT DO NOTHING`` (SQLite and others)."""
    ops = connection.ops
    columns = _columns(project_id, events, now)
    for index in (4, 11):  # the backend's own representation of datetimes
        columns[index] = [ops.adapt_datetimefield_value(v) for v in columns[index]]
    params = [value for row in zip(*columns, strict=True) for value in row]
    row = "(" + ",".join(["%s"] * len(_EVENT_COLUMNS)) + ")"
    sql = (
        f"INSERT INTO {ops.quote_name(Event._meta.db_table)} "
        f"({','.join(ops.quote_name(c) for c in _EVENT_COLUMNS)}) "
        f"VALUES {','.join([row] * len(events))}" + _on_conflict(events)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


# --- experiments -------------------------------------------------------------------------


def _check_slots(project_id: int, control: DeploymentSlot, variant: DeploymentSlot) -> None:
    check_same_project(project_id, control_slot=control, variant_slot=variant)
    if control.pk == variant.pk:
        raise ApplicationError(
            "Control and variant must be two different slots.", field="variant_slot"
        )
    for name, slot in (("control_slot", control), ("variant_slot", variant)):
        if not slot.is_active:
            raise ApplicationError(f"Slot {slot.name!r} is not active.", field=name)


@transaction.atomic
def experiment_create(
    *,
    project: Project,
    name: str,
    control_slot: DeploymentSlot,
    variant_slot: DeploymentSlot,
    metric: str = "click",
    alpha: float = 0.05,
    min_effect: float | None = None,
    retraining_run_id: int | None = None,
    canary_ends_at: datetime | None = None,
) -> Experiment:
    """A DRAFT experiment between two active slots of ``project``; nothing is routed yet."""
    experiment_errors(name=name, metric=metric, alpha=alpha, min_effect=min_effect).raise_if_any()
    _check_slots(project.pk, control_slot, variant_slot)
    return Experiment.objects.create(
        project=project,
        name=name.strip(),
        control_slot=control_slot,
        variant_slot=variant_slot,
        metric=metric,
        alpha=float(alpha),
        min_effect=None if min_effect is None else float(min_effect),
        retraining_run_id=retraining_run_id,
        canary_ends_at=canary_ends_at,
    )


@transaction.atomic
def experiment_start(experiment: Experiment) -> Experiment:
    """DRAFT -> RUNNING. From the next routing poll (about a second) every prediction served by
    either slot carries the experiment and its arm in its request id.

    Refused when a slot is inactive, has weight 0 (it would get no users) or already is an arm
    of another running experiment (an event can be attributed to one experiment only).
    """
    control = DeploymentSlot.objects.select_for_update().get(pk=experiment.control_slot_id)
    variant = DeploymentSlot.objects.select_for_update().get(pk=experiment.variant_slot_id)
    _check_slots(experiment.project_id, control, variant)
    for name, slot in (("control_slot", control), ("variant_slot", variant)):
        if slot.weight <= 0:
            raise ApplicationError(
                f"Slot {slot.name!r} has weight 0, so no user would see it.", field=name
            )
    busy = Experiment.objects.filter(status=Experiment.Status.RUNNING).exclude(pk=experiment.pk)
    slot_ids = [control.pk, variant.pk]
    if (
        busy.filter(control_slot_id__in=slot_ids).exists()
        or busy.filter(variant_slot_id__in=slot_ids).exists()
    ):
        raise ApplicationError(
            "A slot of this experiment is already in another running experiment."
        )
    if not transition(
        Experiment,
        experiment.pk,
        expected=Experiment.Status.DRAFT,
        status=Experiment.Status.RUNNING,
        started_at=timezone.now(),
        control_weight=control.weight,
        variant_weight=variant.weight,
        updated_at=timezone.now(),
    ):
        raise ApplicationError(
            "Only a draft experiment can be started.", field="status", status=409
        )
    bump_routing_version()
    experiment.refresh_from_db()
    return experiment


@transaction.atomic
def experiment_stop(experiment: Experiment) -> Experiment:
    """RUNNING -> STOPPED, recording the decision at that moment. Predictions stop carrying
    the arm from the next routing poll; events of earlier predictions still attribute."""
    decision = experiment_results(experiment).decision
    if not transition(
        Experiment,
        experiment.pk,
        expected=Experiment.Status.RUNNING,
        status=Experiment.Status.STOPPED,
        stopped_at=timezone.now(),
        decision=decision,
        updated_at=timezone.now(),
    ):
        raise ApplicationError(
            "Only a running experiment can be stopped.", field="status", status=409
        )
    bump_routing_version()
    experiment.refresh_from_db()
    return experiment


@transaction.atomic
def experiment_promote(
    experiment: Experiment, slot: DeploymentSlot | None = None, *, changed_by: str = "experiment"
) -> Experiment:
    """Send all traffic to ``slot`` (default: the winner by the current decision).

    A running experiment is stopped first. The chosen slot gets weight 100 and stays active, the
    other slot is deactivated, both through ``deployment.services.slots_promote`` (slot history,
    routing version). Without ``slot`` and without a winner (``continue``/``no_difference``) it
    refuses: promoting on no evidence must be an explicit choice.
    """
    experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.status == Experiment.Status.DRAFT:
        raise ApplicationError(
            "A draft experiment has nothing to promote; start it first.", field="status", status=409
        )
    if slot is not None and slot.pk not in (experiment.control_slot_id, experiment.variant_slot_id):
        raise ApplicationError(
            "Must be the control or the variant slot of this experiment.", field="slot"
        )
    if experiment.status == Experiment.Status.RUNNING:
        experiment = experiment_stop(experiment)
    if slot is None:
        decision = experiment.decision or experiment_results(experiment).decision
        if decision == Experiment.Decision.VARIANT_BETTER:
            slot = experiment.variant_slot
        elif decision == Experiment.Decision.CONTROL_BETTER:
            slot = experiment.control_slot
        else:
            raise ApplicationError(
                f"There is no winner yet (decision {decision!r}); name the slot to promote.",
                field="slot",
            )
    loser = (
        experiment.variant_slot
        if slot.pk == experiment.control_slot_id
        else experiment.control_slot
    )
    slots_promote(
        winner=slot,
        loser=loser,
        changed_by=f"{changed_by} #{experiment.pk}"[:64],
    )
    Experiment.objects.filter(pk=experiment.pk).update(
        promoted_slot_id=slot.pk, updated_at=timezone.now()
    )
    experiment.refresh_from_db()
    return experiment


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmResult:
    slot: int
    arm: str
    users: int
    converted: int
    rate: float | None


@dataclass(frozen=True)
class ExperimentResults:
    """What ``GET /api/v1/experiment/{id}/results/`` answers (``as_dict()``)."""

    experiment: int
    status: str
    metric: str
    arms: list[ArmResult]
    lift: float | None
    difference: float | None
    ci_low: float
    ci_high: float
    p_value: float
    decision: str
    alpha: float
    min_effect: float | None
    srm_p_value: float
    warnings: list[str] = field(default_factory=list)
    method: str = ""
    updated_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _crossed_users(experiment_id: int) -> QuerySet[Any, Any]:
    """Users shown items by both arms (a weight changed mid-run, or a request id was reused):
    they belong to neither arm, so the arms stay disjoint samples."""
    return (
        Event.objects.filter(experiment_id=experiment_id, event_type=IMPRESSION)
        .values("user_id")
        .annotate(n_arms=Count("arm", distinct=True))
        .filter(n_arms__gt=1)
        .values("user_id")
    )


def _distinct_users(experiment_id: int, event_type: str) -> dict[str, int]:
    rows = (
        Event.objects.filter(experiment_id=experiment_id, event_type=event_type)
        .exclude(user_id__in=_crossed_users(experiment_id))
        .values("arm")
        .annotate(n=Count("user_id", distinct=True))
    )
    return {row["arm"]: row["n"] for row in rows}


def _converted_users(experiment_id: int, metric: str) -> dict[str, int]:
    """Per arm: distinct users with an impression in the arm and >= 1 metric event in it."""
    counts: dict[str, int] = {}
    crossed = _crossed_users(experiment_id)
    for arm in ("control", "variant"):
        exposed = Event.objects.filter(
            experiment_id=experiment_id, arm=arm, event_type=IMPRESSION
        ).values("user_id")
        counts[arm] = (
            Event.objects.filter(
                experiment_id=experiment_id, arm=arm, event_type=metric, user_id__in=exposed
            )
            .exclude(user_id__in=crossed)
            .values("user_id")
            .distinct()
            .count()
        )
    return counts


def experiment_results(experiment: Experiment) -> ExperimentResults:
    """Always-valid results per user, computed fresh from the events (three aggregate queries).

    The unit is the user, the randomisation unit: ``users`` of an arm are the distinct users
    with an impression attributed to it, ``converted`` those of them with at least one
    ``metric`` event attributed to it. Attribution comes from the request id, which carries the
    experiment only while it runs, so every counted event belongs to the experiment's run.
    Statistics: ``recotem.lib.abtest`` (mSPRT, valid however often anyone looks).
    """
    from recotem.lib import abtest  # numpy: loaded where results are asked for, not by beat

    users = _distinct_users(experiment.pk, IMPRESSION)
    converted = _converted_users(experiment.pk, experiment.metric)
    n_c, n_v = users.get("control", 0), users.get("variant", 0)
    x_c, x_v = converted["control"], converted["variant"]
    stats = abtest.results(
        n_c, x_c, n_v, x_v, alpha=experiment.alpha, min_effect=experiment.min_effect
    )
    weights = [experiment.control_weight or 0, experiment.variant_weight or 0]
    srm = abtest.srm_p_value([n_c, n_v], weights) if all(weights) else 1.0
    warnings = []
    crossed = _crossed_users(experiment.pk).count()
    if crossed:
        warnings.append(
            f"{crossed} users were shown items by both arms (a slot's weight changed during the "
            "experiment, or a request id was reused for another user); they are left out of "
            "both arms."
        )
    if srm < abtest.SRM_WARN_BELOW:
        warnings.append(
            f"Sample-ratio mismatch: {n_c} control vs {n_v} variant users is unlikely under "
            f"weights {weights[0]}:{weights[1]} (p = {srm:.2g}); check the assignment before "
            "trusting these results."
        )
    return ExperimentResults(
        experiment=experiment.pk,
        status=experiment.status,
        metric=experiment.metric,
        arms=[
            ArmResult(experiment.control_slot_id, "control", n_c, x_c, stats.control_rate),
            ArmResult(experiment.variant_slot_id, "variant", n_v, x_v, stats.variant_rate),
        ],
        lift=stats.lift,
        difference=stats.difference,
        ci_low=stats.ci_low,
        ci_high=stats.ci_high,
        p_value=stats.p_value,
        decision=stats.decision,
        alpha=experiment.alpha,
        min_effect=experiment.min_effect,
        srm_p_value=srm,
        warnings=warnings,
        method=stats.method,
        updated_at=timezone.now(),
    )
