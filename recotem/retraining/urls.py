from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.retraining.api import (
    RetrainingRunViewSet,
    RetrainingScheduleViewSet,
)

router = DefaultRouter()
router.register("retraining_schedule", RetrainingScheduleViewSet, basename="retraining_schedule")
router.register("retraining_run", RetrainingRunViewSet, basename="retraining_run")
urlpatterns = router.urls
