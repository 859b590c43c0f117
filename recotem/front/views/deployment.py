"""Deployment page: slots with weights and active toggles, model swap, history, rollback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.core.jobs import JobStatus
from recotem.deployment import services
from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.front.forms import model_choice
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, project_context
from recotem.projects.models import Project
from recotem.training.models import TrainedModel


class SlotForm(forms.Form):
    name = forms.CharField(label="Slot name", max_length=128, initial="main")
    trained_model: forms.ModelChoiceField[TrainedModel] = forms.ModelChoiceField(
        queryset=None, label="Trained model", empty_label=None
    )
    weight = forms.IntegerField(label="Weight (0–100)", min_value=0, max_value=100, initial=100)
    is_active = forms.BooleanField(label="Active", required=False, initial=True)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "trained_model").queryset = _completed(project)


class SlotEditForm(forms.Form):
    trained_model: forms.ModelChoiceField[TrainedModel] = forms.ModelChoiceField(
        queryset=None, label="Model", empty_label=None
    )
    weight = forms.IntegerField(label="Weight", min_value=0, max_value=100)
    is_active = forms.BooleanField(label="Active", required=False)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_choice(self, "trained_model").queryset = _completed(project)


def _completed(project: Project) -> QuerySet[TrainedModel]:
    return TrainedModel.objects.filter(project=project, status=JobStatus.COMPLETED).select_related(
        "configuration"
    )


@dataclass(frozen=True)
class _SlotRow:
    """One row of the slots table: the slot, its share of the traffic (%) and its edit form."""

    slot: DeploymentSlot
    share: int
    edit_form: SlotEditForm


def _page(
    request: AuthenticatedHttpRequest,
    project: Project,
    status: int = 200,
    form: SlotForm | None = None,
) -> HttpResponse:
    slots = list(
        DeploymentSlot.objects.filter(project=project).select_related(
            "trained_model__configuration"
        )
    )
    total = sum(s.weight for s in slots if s.is_active)
    rows = [
        _SlotRow(
            slot=slot,
            share=round(100 * slot.weight / total) if slot.is_active and total else 0,
            edit_form=SlotEditForm(
                prefix=f"slot{slot.pk}",
                project=project,
                initial={
                    "trained_model": slot.trained_model_id,
                    "weight": slot.weight,
                    "is_active": slot.is_active,
                },
            ),
        )
        for slot in slots
    ]
    history = SlotHistory.objects.filter(slot__project=project).select_related("slot")[:30]
    context = project_context(
        project,
        "deployment",
        slots=rows,
        history=history,
        form=form or SlotForm(prefix="new", project=project),
        has_models=_completed(project).exists(),
    )
    return render(request, "front/deployment.html", context, status=status)


@login_required
def deployment_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _page(request, get_project(request, pk))


@login_required
@require_POST
def slot_create(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    form = SlotForm(request.POST, prefix="new", project=project)
    if form.is_valid():
        try:
            slot = services.slot_create(project=project, **form.cleaned_data)
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request, f"Slot “{slot.name}” now serves model #{slot.trained_model_id}."
            )
            return redirect("front:deployment", project.pk)
    return _page(request, project, status=400, form=form)


@login_required
@require_POST
def slot_update(request: AuthenticatedHttpRequest, pk: int, slot_id: int) -> HttpResponse:
    project = get_project(request, pk)
    slot = get_object_or_404(DeploymentSlot, pk=slot_id, project=project)
    form = SlotEditForm(request.POST, prefix=f"slot{slot.pk}", project=project)
    if not form.is_valid():
        errors = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items())
        messages.error(request, f"Slot “{slot.name}” was not changed: {errors}")
        return redirect("front:deployment", project.pk)
    try:
        services.slot_update(
            slot=slot, data=form.cleaned_data, changed_by=f"user:{request.user.username}"
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Slot “{slot.name}” updated.")
    return redirect("front:deployment", project.pk)


@login_required
@require_POST
def slot_rollback(request: AuthenticatedHttpRequest, pk: int, slot_id: int) -> HttpResponse:
    project = get_project(request, pk)
    slot = get_object_or_404(DeploymentSlot, pk=slot_id, project=project)
    try:
        slot = services.slot_rollback(slot=slot)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Slot “{slot.name}” rolled back to model #{slot.trained_model_id}."
        )
    return redirect("front:deployment", project.pk)


@login_required
@require_POST
def slot_delete(request: AuthenticatedHttpRequest, pk: int, slot_id: int) -> HttpResponse:
    project = get_project(request, pk)
    slot = get_object_or_404(DeploymentSlot, pk=slot_id, project=project)
    services.slot_delete(slot=slot)
    messages.success(request, f"Slot “{slot.name}” removed.")
    return redirect("front:deployment", project.pk)
