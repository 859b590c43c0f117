"""Project list, creation and the overview page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render

from recotem.core.jobs import JobStatus
from recotem.deployment.models import DeploymentSlot
from recotem.front.forms import ProjectForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import get_project, project_context
from recotem.projects.models import Project
from recotem.retraining.models import RetrainingRun, RetrainingSchedule
from recotem.training.models import TrainedModel


@login_required
def project_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        project = form.save(commit=False)
        project.owner = request.user
        project.save()
        messages.success(
            request, f"Project “{project.name}” created. Next: upload your interaction data."
        )
        return redirect("front:data", project.pk)
    projects = Project.objects.filter(owner=request.user).order_by("name")
    status = 400 if request.method == "POST" else 200
    return render(
        request, "front/project_list.html", {"projects": projects, "form": form}, status=status
    )


@login_required
def project_overview(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    latest_data = project.training_data.first()
    best_model = _best_model(project)
    slots = list(
        DeploymentSlot.objects.filter(project=project).select_related(
            "trained_model__configuration"
        )
    )
    schedule = RetrainingSchedule.objects.filter(project=project).first()
    last_run = RetrainingRun.objects.filter(schedule=schedule).first() if schedule else None
    context = project_context(
        project,
        "overview",
        latest_data=latest_data,
        data_count=project.training_data.count(),
        best_model=best_model,
        slots=slots,
        schedule=schedule,
        last_run=last_run,
        model_count=project.trained_models.count(),
    )
    return render(request, "front/overview.html", context)


def _best_model(project: Project) -> TrainedModel | None:
    """The completed model with the highest first test metric; a small scan (newest 200)."""
    candidates = list(
        project.trained_models.filter(status=JobStatus.COMPLETED).select_related("configuration")[
            :200
        ]
    )
    metrics = [(m, _primary_metric(m.test_metrics)) for m in candidates]
    scored = [(m, s) for m, s in metrics if s is not None]
    if not scored:
        return candidates[0] if candidates else None
    return max(scored, key=lambda pair: pair[1])[0]


def _primary_metric(metrics: dict[str, Any]) -> float | None:
    for key in sorted(metrics):
        if key.startswith("ndcg") and isinstance(metrics[key], int | float):
            return float(metrics[key])
    for value in metrics.values():
        if isinstance(value, int | float):
            return float(value)
    return None
