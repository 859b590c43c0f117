from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.training import api

router = DefaultRouter()
router.register("trained_model", api.TrainedModelViewSet, basename="trained_model")
router.register(
    "model_configuration", api.ModelConfigurationViewSet, basename="model_configuration"
)
urlpatterns = router.urls
