from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.deployment.api import DeploymentSlotViewSet

router = DefaultRouter()
router.register("deployment_slot", DeploymentSlotViewSet, basename="deployment_slot")
urlpatterns = router.urls
