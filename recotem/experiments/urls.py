from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.experiments.api import ExperimentViewSet

router = DefaultRouter()
router.register("experiment", ExperimentViewSet, basename="experiment")
urlpatterns = router.urls
