"""Tuning page: split/evaluation configs, start a job; job page with live progress and plot."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import JobStatus
from recotem.front.forms import EvaluationConfigForm, SplitConfigForm, TuningJobForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, paginate, project_context
from recotem.front.views.plots import optimization_history_html
from recotem.projects.models import Project
from recotem.tuning import services
from recotem.tuning.models import EvaluationConfig, ParameterTuningJob, SplitConfig

ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)


def _page(
    request: AuthenticatedHttpRequest, project: Project, status: int = 200, **forms: Any
) -> HttpResponse:
    jobs = (
        ParameterTuningJob.objects.filter(project=project)
        .select_related("best_config", "evaluation", "data")
        .defer("test_scores")  # a retraining gate's input, never shown
    )
    context = project_context(
        project,
        "tuning",
        split_form=forms.get("split_form") or SplitConfigForm(prefix="split", project=project),
        eval_form=forms.get("eval_form") or EvaluationConfigForm(prefix="eval", project=project),
        job_form=forms.get("job_form") or TuningJobForm(prefix="job", project=project),
        splits=SplitConfig.objects.filter(project=project)[:50],
        evaluations=EvaluationConfig.objects.filter(project=project)[:50],
        jobs=paginate(request, jobs),
        has_data=project.training_data.exists(),
    )
    return render(request, "front/tuning.html", context, status=status)


@login_required
def tuning_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _page(request, get_project(request, pk))


@login_required
@require_POST
def config_create(request: AuthenticatedHttpRequest, pk: int, kind: str) -> HttpResponse:
    project = get_project(request, pk)
    if kind not in ("split", "eval"):
        raise Http404("Unknown configuration kind.")
    form_class = SplitConfigForm if kind == "split" else EvaluationConfigForm
    form = form_class(request.POST, prefix=kind, project=project)
    if form.is_valid():
        obj = form.save(commit=False)
        obj.project = project
        obj.save()
        messages.success(request, f"Saved {obj}.")
        return redirect("front:tuning", project.pk)
    return _page(request, project, status=400, **{f"{kind}_form": form})


@login_required
@require_POST
def job_create(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    form = TuningJobForm(request.POST, prefix="job", project=project)
    if form.is_valid():
        data = form.cleaned_data
        try:
            job = services.tuning_job_create(
                project=project,
                data=data["data"],
                split=data["split"],
                evaluation=data["evaluation"],
                n_trials=data["n_trials"],
                timeout_overall=data["timeout_overall"],
                tried_algorithms=data["tried_algorithms"] or None,
                train_after_tuning=data["train_after_tuning"],
            )
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Tuning job #{job.pk} queued.")
            return redirect("front:tuning_job", project.pk, job.pk)
    return _page(request, project, status=400, job_form=form)


def _job_context(request: AuthenticatedHttpRequest, pk: int, job_id: int) -> dict[str, Any]:
    project = get_project(request, pk)
    job = get_object_or_404(
        ParameterTuningJob.objects.select_related(
            "best_config", "evaluation", "split", "data", "tuned_model"
        ).defer("test_scores"),
        pk=job_id,
        project=project,
    )
    trials = list(
        job.trials.order_by("number").values_list(
            "number", "score", "algorithm", "state", "duration", "params"
        )
    )
    metric = f"{job.evaluation.target_metric}@{job.evaluation.cutoff}"
    percent = min(100, round(100 * job.trials_done / job.n_trials)) if job.n_trials else 0
    if job.status == JobStatus.COMPLETED:
        percent = 100
    return project_context(
        project,
        "tuning",
        job=job,
        active=job.status in ACTIVE,
        percent=percent,
        trials=trials,
        metric=metric,
        plot=optimization_history_html([(t[0], t[1], t[2]) for t in trials], metric),
    )


@login_required
def job_detail(request: AuthenticatedHttpRequest, pk: int, job_id: int) -> HttpResponse:
    return render(request, "front/tuning_job.html", _job_context(request, pk, job_id))


@login_required
def job_progress(request: AuthenticatedHttpRequest, pk: int, job_id: int) -> HttpResponse:
    """The htmx-polled fragment; it stops polling itself once the job is finished."""
    return render(request, "front/tuning_job_progress.html", _job_context(request, pk, job_id))
