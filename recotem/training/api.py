"""REST resources: trained_model (POST trains in the worker) and task_log (read-only)."""

from __future__ import annotations

from typing import Any

from django.db.models.deletion import ProtectedError, RestrictedError
from django.http import FileResponse
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField, SameProjectMixin
from recotem.core.exceptions import ApplicationError
from recotem.projects.models import Project, TrainingData
from recotem.training import services
from recotem.training.models import TaskLog, TrainedModel
from recotem.tuning.models import ModelConfiguration


class TrainedModelSerializer(SameProjectMixin, serializers.ModelSerializer):
    same_project_fields = ("configuration", "data_loc")

    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="", required=False)
    configuration = OwnedPrimaryKeyRelatedField(queryset=ModelConfiguration.objects.all())
    data_loc = OwnedPrimaryKeyRelatedField(queryset=TrainingData.objects.all())
    recommender_class_name = serializers.CharField(source="configuration.recommender_class_name", read_only=True)

    class Meta:
        model = TrainedModel
        fields = [
            "id", "project", "configuration", "data_loc", "recommender_class_name", "status",
            "filesize", "test_metrics", "irspack_version", "training_time", "data_fingerprint",
            "error", "started_at", "completed_at", "created_at",
        ]
        read_only_fields = [
            "id", "status", "filesize", "test_metrics", "irspack_version", "training_time",
            "data_fingerprint", "error", "started_at", "completed_at", "created_at",
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "project" not in attrs and attrs.get("configuration") is not None:
            attrs["project"] = attrs["configuration"].project
        return super().validate(attrs)


class SampleQuerySerializer(serializers.Serializer):
    user_id = serializers.CharField()
    cutoff = serializers.IntegerField(required=False, default=10, min_value=1, max_value=1000)


class TrainedModelViewSet(OwnedModelViewSet):
    queryset = TrainedModel.objects.select_related("project", "configuration")
    serializer_class = TrainedModelSerializer
    filterset_fields = ("project", "status", "configuration", "data_loc")
    http_method_names = ["get", "post", "delete", "head", "options"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = services.trained_model_create(
            configuration=serializer.validated_data["configuration"],
            data=serializer.validated_data["data_loc"],
        )
        return Response(self.get_serializer(model).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: TrainedModel) -> None:
        try:
            services.trained_model_delete(trained_model=instance)
        except (ProtectedError, RestrictedError):
            raise ApplicationError(
                "This model is still used (e.g. by a deployment slot); remove that first.", status=409
            ) from None

    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        """The signed artifact, streamed as stored."""
        model = self.get_object()
        if not model.file:
            raise ApplicationError(f"Model #{model.pk} is {model.status}; it has no artifact yet.", field="status")
        return FileResponse(model.file.open("rb"), as_attachment=True, filename=f"recotem-model-{model.pk}.rctm",
                            content_type="application/octet-stream")

    @action(detail=True, methods=["get"])
    def sample_recommendation(self, request: Request, pk: str | None = None) -> Response:
        """Top items for a known user (`?user_id=U&cutoff=10`), excluding items the user already has."""
        model = self.get_object()
        query = SampleQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(services.sample_recommendation(
            trained_model=model, user_id=query.validated_data["user_id"], cutoff=query.validated_data["cutoff"]
        ))


class TaskLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskLog
        fields = ["id", "project", "task", "tuning_job", "trained_model", "level", "contents", "created_at"]
        read_only_fields = fields


class TaskLogViewSet(OwnedModelViewSet, viewsets.ReadOnlyModelViewSet):
    queryset = TaskLog.objects.all()
    serializer_class = TaskLogSerializer
    filterset_fields = ("project", "task", "tuning_job", "trained_model", "level")
    http_method_names = ["get", "head", "options"]



