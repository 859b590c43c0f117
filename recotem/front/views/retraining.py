"""Retraining page: the schedule form with a live cron preview, Run now, the run history."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import get_template
from django.views.decorators.http import require_GET, require_POST

from recotem.core.exceptions import ApplicationError
from recotem.front.forms import ScheduleForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, paginate, project_context
from recotem.front.views.plots import metric_per_run_html
from recotem.lib.cron import CronError, TimezoneError, describe_cron, next_runs
from recotem.projects.models import Project
from recotem.retraining import runs, schedules
from recotem.retraining.canary import canary_of_runs
from recotem.retraining.models import ACTIVE_STATUSES, RetrainingRun, RetrainingSchedule, RunStatus

CRON_PREVIEW_TMPL = get_template("front/retraining_cron_preview.html")
CHART_RUNS = 200


def _schedule(project: Project) -> RetrainingSchedule | None:
    return (
        RetrainingSchedule.objects.filter(project=project)
        .select_related("evaluation_config")
        .first()
    )


def cron_preview_context(expr: str, tz: str) -> dict[str, Any]:
    """Description and next 5 fire times, or the reason the input cannot be scheduled."""
    expr = (expr or "").strip()
    tz = (tz or "UTC").strip()
    if not expr:
        return {"error": "Type a cron expression, e.g. 0 2 * * * for every day at 02:00."}
    try:
        return {"description": describe_cron(expr), "runs": next_runs(expr, tz, n=5), "tz": tz}
    except (CronError, TimezoneError) as exc:
        return {"error": str(exc)}


@require_GET
@login_required
def cron_preview(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """htmx fragment: always status 200, invalid input explained inline."""
    get_project(request, pk)
    context = cron_preview_context(
        request.GET.get("cron_expression", ""), request.GET.get("timezone", "UTC")
    )
    return HttpResponse(CRON_PREVIEW_TMPL.render(context, request))


def _runs_context(
    request: AuthenticatedHttpRequest, project: Project, schedule: RetrainingSchedule | None
) -> dict[str, Any]:
    if schedule is None:
        return {"project": project, "schedule": None, "runs": None, "active": False}
    runs = (
        RetrainingRun.objects.filter(schedule=schedule)
        .select_related("trained_model", "tuning_job", "deployed_slot")
        .defer("notification")
    )
    page = paginate(request, runs)
    canaries = canary_of_runs(
        [run.pk for run in page.object_list if run.gate_decision == RetrainingRun.Gate.CANARY]
    )
    rows = [_run_row(run, canaries.get(run.pk)) for run in page.object_list]
    active = RetrainingRun.objects.filter(schedule=schedule, status__in=ACTIVE_STATUSES).exists()
    return {"project": project, "schedule": schedule, "runs": page, "rows": rows, "active": active}


def _run_row(run: RetrainingRun, canary: dict[str, Any] | None = None) -> dict[str, Any]:
    duration = None
    if run.started_at and run.completed_at:
        duration = (run.completed_at - run.started_at).total_seconds()
    gate = run.gate_report if isinstance(run.gate_report, dict) else {}
    timings = run.timings if isinstance(run.timings, dict) else {}
    return {
        "run": run,
        "duration": duration,
        "gate": gate if gate.get("reason") else None,
        "timings": [(k, v) for k, v in timings.items() if isinstance(v, (int, float))],
        "cancellable": run.status in ACTIVE_STATUSES and run.cancel_requested_at is None,
        "canary": canary,
    }


def _chart(schedule: RetrainingSchedule | None) -> str:
    """Metric per completed run (newest 200, oldest first): one narrow query, no joins."""
    if schedule is None:
        return ""
    rows = list(
        RetrainingRun.objects.filter(schedule=schedule, status=RunStatus.COMPLETED)
        .order_by("-id")
        .values_list("id", "completed_at", "metrics")[:CHART_RUNS]
    )
    rows.reverse()
    key = _metric_key(schedule, [m for _, _, m in rows])
    if key is None:
        return ""
    points = [
        (done, float(m[key]), rid)
        for rid, done, m in rows
        if done and isinstance(m.get(key), int | float)
    ]
    return metric_per_run_html(points, key)


def _metric_key(schedule: RetrainingSchedule, metrics: list[dict[str, Any]]) -> str | None:
    keys: list[str] = []
    for m in metrics:
        keys += [
            k
            for k, v in m.items()
            if isinstance(v, int | float) and k not in keys and k != "gate_score"
        ]
    if not keys:
        return None
    if schedule.evaluation_config is not None:
        wanted = f"{schedule.evaluation_config.target_metric}@{schedule.evaluation_config.cutoff}"
        if wanted in keys:
            return wanted
    for prefix in ("ndcg@", "ndcg", "map@", "recall@"):
        for k in keys:
            if k.startswith(prefix):
                return k
    return keys[0]


def _page(
    request: AuthenticatedHttpRequest,
    project: Project,
    form: ScheduleForm | None = None,
    status: int = 200,
) -> HttpResponse:
    schedule = _schedule(project)
    if form is None:
        form = ScheduleForm(instance=schedule, project=project)
    expr = form["cron_expression"].value() or ""
    tz = form["timezone"].value() or "UTC"
    context = project_context(
        project,
        "retraining",
        form=form,
        preview=cron_preview_context(str(expr), str(tz)),
        chart=_chart(schedule),
        has_configs=project.model_configurations.exists(),
        **{k: v for k, v in _runs_context(request, project, schedule).items() if k != "project"},
    )
    return render(request, "front/retraining.html", context, status=status)


@login_required
def retraining_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    if request.method == "POST":
        return _save(request, project)
    return _page(request, project)


def _save(request: AuthenticatedHttpRequest, project: Project) -> HttpResponse:
    schedule = _schedule(project)
    form = ScheduleForm(request.POST, instance=schedule, project=project)
    if form.is_valid():
        fields = {name: form.cleaned_data[name] for name in form.Meta.fields}
        try:
            if schedule is None:
                schedules.schedule_create(project=project, **fields)
            else:
                schedules.schedule_update(schedule=schedule, **fields)
        except (ApplicationError, CronError, TimezoneError) as exc:
            add_service_error(form, exc)
        else:
            state = "enabled" if fields["is_enabled"] else "saved but disabled"
            messages.success(request, f"Schedule {state}.")
            return redirect("front:retraining", project.pk)
    return _page(request, project, form=form, status=400)


@login_required
@require_POST
def run_now(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    schedule = _schedule(project)
    if schedule is None:
        messages.error(request, "Save the schedule first; Run now uses its settings.")
        return redirect("front:retraining", project.pk)
    try:
        run, queued = runs.run_trigger(schedule=schedule, trigger=RetrainingRun.Trigger.MANUAL)
    except runs.RunConflict as exc:
        messages.error(request, f"Run #{exc.run_id} is still active; wait for it to finish.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if queued:
            messages.success(request, f"Run #{run.pk} queued.")
        else:
            messages.warning(
                request,
                f"Run #{run.pk} recorded; the broker is unreachable, it starts when it is back.",
            )
    return redirect("front:retraining", project.pk)


@login_required
@require_POST
def run_cancel(request: AuthenticatedHttpRequest, pk: int, run_id: int) -> HttpResponse:
    project = get_project(request, pk)
    run = RetrainingRun.objects.filter(pk=run_id, schedule__project=project).first()
    if run is None:
        raise Http404
    try:
        run = runs.run_cancel(run=run)
    except runs.RunEnded as exc:
        messages.error(request, exc.message)
    else:
        done = run.status == RunStatus.CANCELLED
        messages.success(request, f"Run #{run.pk} {'cancelled' if done else 'is being cancelled'}.")
    return redirect("front:retraining", project.pk)


@login_required
def runs_fragment(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The runs table (htmx): polls itself while a run is PENDING or RUNNING."""
    project = get_project(request, pk)
    return render(
        request, "front/retraining_runs.html", _runs_context(request, project, _schedule(project))
    )
