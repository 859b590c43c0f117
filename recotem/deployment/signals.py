"""Any saved or deleted slot or API key — through the API, the admin, a service or auto-deploy —
bumps the routing version inside the same transaction, so inference processes pick it up.
(Slot history is written by the services, `recotem.deployment.services`.)"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from recotem.accounts.models import ApiKey
from recotem.deployment.models import DeploymentSlot
from recotem.deployment.services import bump_routing_version


@receiver(post_save, sender=DeploymentSlot, dispatch_uid="deployment-slot-saved")
@receiver(post_delete, sender=DeploymentSlot, dispatch_uid="deployment-slot-deleted")
@receiver(post_save, sender=ApiKey, dispatch_uid="api-key-saved")
@receiver(post_delete, sender=ApiKey, dispatch_uid="api-key-deleted")
def _routing_changed(sender: Any, **kwargs: Any) -> None:
    bump_routing_version()
