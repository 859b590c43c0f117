"""Any saved or deleted slot or API key — through the API, the admin, a service or auto-deploy —
bumps the routing version inside the same transaction, so inference processes pick it up."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from recotem.accounts.models import ApiKey
from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.deployment.services import bump_routing_version


@receiver(post_save, sender=DeploymentSlot, dispatch_uid="deployment-slot-saved")
@receiver(post_delete, sender=DeploymentSlot, dispatch_uid="deployment-slot-deleted")
@receiver(post_save, sender=ApiKey, dispatch_uid="api-key-saved")
@receiver(post_delete, sender=ApiKey, dispatch_uid="api-key-deleted")
def _routing_changed(sender: Any, **kwargs: Any) -> None:
    bump_routing_version()


@receiver(pre_save, sender=DeploymentSlot, dispatch_uid="deployment-slot-before-save")
def _remember_model(sender: Any, instance: DeploymentSlot, **kwargs: Any) -> None:
    # Saves that bypass the services (the admin) still get a history entry, so rollback works.
    if getattr(instance, "_history_recorded", False):
        return
    previous = None
    if instance.pk is not None:
        previous = DeploymentSlot.objects.filter(pk=instance.pk).values_list("trained_model_id", flat=True).first()
    instance._previous_model_id = previous  # type: ignore[attr-defined]


@receiver(post_save, sender=DeploymentSlot, dispatch_uid="deployment-slot-history")
def _record_history(sender: Any, instance: DeploymentSlot, created: bool, **kwargs: Any) -> None:
    if getattr(instance, "_history_recorded", False) or not hasattr(instance, "_previous_model_id"):
        return
    previous = instance._previous_model_id
    del instance._previous_model_id
    if created or previous != instance.trained_model_id:
        SlotHistory.objects.create(
            slot=instance, trained_model_id=instance.trained_model_id, previous_model_id=previous, changed_by="admin"
        )
