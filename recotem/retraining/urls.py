from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.retraining.api import (
    DataSourceViewSet,
    RetrainingRunViewSet,
    RetrainingScheduleViewSet,
)

router = DefaultRouter()
router.register("retraining_schedule", RetrainingScheduleViewSet, basename="retraining_schedule")
router.register("retraining_run", RetrainingRunViewSet, basename="retraining_run")
router.register("data_source", DataSourceViewSet, basename="data_source")
urlpatterns = router.urls
