from __future__ import annotations

from rest_framework.routers import DefaultRouter

from recotem.projects import api

router = DefaultRouter()
router.register("project", api.ProjectViewSet, basename="project")
router.register("training_data", api.TrainingDataViewSet, basename="training_data")
router.register("item_meta_data", api.ItemMetaDataViewSet, basename="item_meta_data")
router.register("data_source", api.DataSourceViewSet, basename="data_source")
router.register("task_log", api.TaskLogViewSet, basename="task_log")
urlpatterns = router.urls
