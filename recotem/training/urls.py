from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.training import api

router = DefaultRouter()
router.register("trained_model", api.TrainedModelViewSet, basename="trained_model")
router.register("task_log", api.TaskLogViewSet, basename="task_log")
urlpatterns = router.urls
