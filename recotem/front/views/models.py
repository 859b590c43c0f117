"""Models page: configurations, training, trained models with metrics, download, sample recs."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import JobStatus
from recotem.front.forms import ModelConfigurationForm, SampleRecommendationForm, TrainForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, paginate, project_context
from recotem.projects.models import Project
from recotem.training import services
from recotem.training.models import ModelConfiguration, TrainedModel


def _page(
    request: AuthenticatedHttpRequest, project: Project, status: int = 200, **forms: Any
) -> HttpResponse:
    trained = TrainedModel.objects.filter(project=project).select_related(
        "configuration", "data_loc"
    )
    page = paginate(request, trained)
    context = project_context(
        project,
        "models",
        config_form=forms.get("config_form")
        or ModelConfigurationForm(prefix="config", project=project),
        train_form=forms.get("train_form") or TrainForm(prefix="train", project=project),
        sample_form=forms.get("sample_form")
        or SampleRecommendationForm(prefix="sample", project=project),
        configurations=ModelConfiguration.objects.filter(project=project)[:50],
        models=page,
        active=any(m.status in (JobStatus.PENDING, JobStatus.RUNNING) for m in page.object_list),
        has_data=project.training_data.exists(),
        has_completed=TrainedModel.objects.filter(
            project=project, status=JobStatus.COMPLETED
        ).exists(),
        sample=forms.get("sample"),
    )
    return render(request, "front/models.html", context, status=status)


@login_required
def models_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    if request.htmx and request.GET.get("fragment") == "table":
        trained = TrainedModel.objects.filter(project=project).select_related(
            "configuration", "data_loc"
        )
        page = paginate(request, trained)
        active = any(m.status in (JobStatus.PENDING, JobStatus.RUNNING) for m in page.object_list)
        return render(
            request,
            "front/models_table.html",
            {"project": project, "models": page, "active": active},
        )
    return _page(request, project)


@login_required
@require_POST
def configuration_create(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    form = ModelConfigurationForm(request.POST, prefix="config", project=project)
    if form.is_valid():
        config = form.save(commit=False)
        config.project = project
        config.save()
        messages.success(request, f"Configuration “{config.name}” saved. Train it below.")
        return redirect("front:models", project.pk)
    return _page(request, project, status=400, config_form=form)


@login_required
@require_POST
def train(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    form = TrainForm(request.POST, prefix="train", project=project)
    if form.is_valid():
        try:
            model = services.trained_model_create(
                configuration=form.cleaned_data["configuration"], data=form.cleaned_data["data"]
            )
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Model #{model.pk} queued for training.")
            return redirect("front:models", project.pk)
    return _page(request, project, status=400, train_form=form)


@login_required
def download(request: AuthenticatedHttpRequest, pk: int, model_id: int) -> FileResponse:
    project = get_project(request, pk)
    model = get_object_or_404(TrainedModel, pk=model_id, project=project)
    if model.status != JobStatus.COMPLETED or not model.file:
        raise Http404("This model has no artifact yet.")
    return FileResponse(
        model.file.open("rb"), as_attachment=True, filename=f"recotem-model-{model.pk}.bin"
    )


@login_required
@require_POST
def sample(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Recommendations for one user id, as a fragment (htmx) or within the page."""
    project = get_project(request, pk)
    form = SampleRecommendationForm(request.POST, prefix="sample", project=project)
    result = None
    if form.is_valid():
        try:
            result = services.sample_recommendation(
                trained_model=form.cleaned_data["trained_model"],
                user_id=form.cleaned_data["user_id"].strip(),
                cutoff=form.cleaned_data["cutoff"],
            )
        except ApplicationError as exc:
            add_service_error(form, exc)
        except Exception as exc:  # a broken or unsigned artifact must not become a 500 page
            form.add_error(None, f"The model could not be loaded: {exc}")
    if request.htmx:
        return render(
            request,
            "front/models_sample.html",
            {"sample_form": form, "sample": result, "project": project},
        )
    return _page(request, project, sample_form=form, sample=result)
