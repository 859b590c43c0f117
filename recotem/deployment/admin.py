"""Admin of deployment: slot changes go through the services, so they are recorded in the slot's
history (rollback works after an admin edit) like changes made through the API or the UI."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms import ModelForm
from django.http import HttpRequest

from recotem.core.admin import register_app_models
from recotem.deployment import services
from recotem.deployment.models import DeploymentSlot


class DeploymentSlotAdminForm(ModelForm[DeploymentSlot]):
    class Meta:
        model = DeploymentSlot
        fields = "__all__"

    def clean(self) -> dict[str, Any] | None:
        """Refuse a model change the services would refuse (a running canary), on the field."""
        cleaned = super().clean()
        if self.instance.pk is not None and "trained_model" in self.changed_data:
            reason = services.slot_model_change_refusal(self.instance)
            if reason is not None:
                raise ValidationError({"trained_model": reason})
        return cleaned


class DeploymentSlotAdmin(admin.ModelAdmin[DeploymentSlot]):
    form = DeploymentSlotAdminForm

    def save_model(
        self,
        request: HttpRequest,
        obj: DeploymentSlot,
        form: ModelForm[DeploymentSlot],
        change: bool,
    ) -> None:
        if not change:
            created = services.slot_create(
                project=obj.project,
                name=obj.name,
                trained_model=obj.trained_model,
                weight=obj.weight,
                is_active=obj.is_active,
                changed_by="admin",
            )
            obj.pk, obj.created_at, obj.updated_at = (
                created.pk,
                created.created_at,
                created.updated_at,
            )
            return
        saved = DeploymentSlot.objects.get(pk=obj.pk)
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        services.slot_update(slot=saved, data=changes, changed_by="admin")

    def delete_model(self, request: HttpRequest, obj: DeploymentSlot) -> None:
        services.slot_delete(slot=obj)


register_app_models("deployment", custom={DeploymentSlot: DeploymentSlotAdmin})
