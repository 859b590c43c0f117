"""Experiments page: list and create experiments between two slots, start / stop / promote, and
the results (arm table, always-valid interval over time, sample-ratio warning)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.deployment.models import DeploymentSlot
from recotem.experiments import services
from recotem.experiments.models import Experiment
from recotem.experiments.reports import experiment_timeline
from recotem.front.forms import model_choice
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, project_context
from recotem.front.views.plots import experiment_timeline_html
from recotem.projects.models import Project


class ExperimentForm(forms.Form):
    name = forms.CharField(max_length=128)
    control_slot: forms.ModelChoiceField[DeploymentSlot] = forms.ModelChoiceField(
        queryset=DeploymentSlot.objects.none(), label="Control slot"
    )
    variant_slot: forms.ModelChoiceField[DeploymentSlot] = forms.ModelChoiceField(
        queryset=DeploymentSlot.objects.none(), label="Variant slot"
    )
    metric = forms.CharField(
        max_length=32, initial="click", help_text="The event type that counts as a conversion."
    )
    alpha = forms.FloatField(initial=0.05, help_text="Always-valid: look as often as you like.")
    min_effect = forms.FloatField(
        required=False,
        label="Minimum effect (optional)",
        help_text="An absolute difference in rate (0.01 = one point): smaller counts as no difference.",
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        active = DeploymentSlot.objects.filter(project=project, is_active=True)
        model_choice(self, "control_slot").queryset = active
        model_choice(self, "variant_slot").queryset = active


class PromoteForm(forms.Form):
    slot: forms.ModelChoiceField[DeploymentSlot] = forms.ModelChoiceField(
        queryset=DeploymentSlot.objects.none(), required=False, empty_label="— the winner —"
    )

    def __init__(self, *args: Any, experiment: Experiment, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "slot").queryset = DeploymentSlot.objects.filter(
            pk__in=[experiment.control_slot_id, experiment.variant_slot_id]
        )


def _list(
    request: AuthenticatedHttpRequest,
    project: Project,
    form: ExperimentForm | None = None,
    status: int = 200,
) -> HttpResponse:
    experiments = Experiment.objects.filter(project=project).select_related(
        "control_slot", "variant_slot"
    )[:100]
    context = project_context(
        project,
        "experiments",
        experiments=experiments,
        form=form or ExperimentForm(prefix="new", project=project),
        has_slots=DeploymentSlot.objects.filter(project=project, is_active=True).count() >= 2,
    )
    return render(request, "front/experiments.html", context, status=status)


@login_required
def experiments_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    if request.method != "POST":
        return _list(request, project)
    form = ExperimentForm(request.POST, prefix="new", project=project)
    if form.is_valid():
        try:
            experiment = services.experiment_create(project=project, **form.cleaned_data)
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request, f"Experiment “{experiment.name}” created; start it to split users."
            )
            return redirect("front:experiment", project.pk, experiment.pk)
    return _list(request, project, form=form, status=400)


@login_required
def experiment_detail(
    request: AuthenticatedHttpRequest, pk: int, experiment_id: int
) -> HttpResponse:
    project = get_project(request, pk)
    experiment = get_object_or_404(
        Experiment.objects.select_related("control_slot", "variant_slot"),
        pk=experiment_id,
        project=project,
    )
    results = None
    chart = ""
    if experiment.status != Experiment.Status.DRAFT:
        results = services.experiment_results(experiment)
        chart = experiment_timeline_html(experiment_timeline(experiment))
    slots = {
        experiment.control_slot_id: experiment.control_slot,
        experiment.variant_slot_id: experiment.variant_slot,
    }
    arms = [(arm, slots.get(arm.slot)) for arm in results.arms] if results else []
    context = project_context(
        project,
        "experiments",
        experiment=experiment,
        results=results,
        arms=arms,
        chart=chart,
        promote_form=PromoteForm(experiment=experiment),
    )
    return render(request, "front/experiment.html", context)


@login_required
@require_POST
def experiment_action(
    request: AuthenticatedHttpRequest, pk: int, experiment_id: int, action: str
) -> HttpResponse:
    """Start, stop or promote; a refusal is shown as a message on the page."""
    project = get_project(request, pk)
    experiment = get_object_or_404(Experiment, pk=experiment_id, project=project)
    try:
        if action == "start":
            services.experiment_start(experiment)
            messages.success(request, "Started: users are split between the two slots.")
        elif action == "stop":
            services.experiment_stop(experiment)
            messages.success(request, "Stopped; the decision at this moment is recorded.")
        elif action == "promote":
            form = PromoteForm(request.POST, experiment=experiment)
            slot = form.cleaned_data.get("slot") if form.is_valid() else None
            experiment = services.experiment_promote(
                experiment, slot, changed_by=f"user:{request.user.username}"
            )
            promoted = DeploymentSlot.objects.filter(
                pk__in=[experiment.promoted_slot_id or 0]
            ).first()
            name = promoted.name if promoted is not None else "?"
            messages.success(request, f"Promoted: slot “{name}” now gets all traffic.")
        else:
            raise Http404("Unknown action.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("front:experiment", project.pk, experiment.pk)
