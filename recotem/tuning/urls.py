from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.tuning import api

router = DefaultRouter()
router.register("split_config", api.SplitConfigViewSet, basename="split_config")
router.register("evaluation_config", api.EvaluationConfigViewSet, basename="evaluation_config")
router.register(
    "parameter_tuning_job", api.ParameterTuningJobViewSet, basename="parameter_tuning_job"
)
urlpatterns = router.urls
