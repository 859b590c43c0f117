from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.projects.api import ItemMetaDataViewSet, ProjectViewSet, TrainingDataViewSet

router = DefaultRouter()
router.register("project", ProjectViewSet, basename="project")
router.register("training_data", TrainingDataViewSet, basename="training_data")
router.register("item_meta_data", ItemMetaDataViewSet, basename="item_meta_data")
urlpatterns = router.urls
