"""REST resources: model_configuration and trained_model (POST trains in the worker)."""

from __future__ import annotations

from typing import Any

from django.db.models.deletion import ProtectedError, RestrictedError
from django.http import FileResponse
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import (
    OwnedModelViewSet,
    OwnedPrimaryKeyRelatedField,
    SameProjectMixin,
    current_value,
)
from recotem.core.exceptions import ApplicationError
from recotem.ml.catalogue import available_recommenders
from recotem.projects.models import Project, TrainingData
from recotem.training import services
from recotem.training.models import ModelConfiguration, TrainedModel
from recotem.training.validation import validate_model_configuration


class ModelConfigurationSerializer(serializers.ModelSerializer[ModelConfiguration]):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    parameters_json = serializers.JSONField(required=False)
    tuning_job = serializers.IntegerField(source="tuning_job_id", read_only=True, allow_null=True)

    class Meta:
        model = ModelConfiguration
        fields = [
            "id",
            "project",
            "name",
            "recommender_class_name",
            "parameters_json",
            "tuning_job",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        validators: list[Any] = []  # the (project, name) clash gets its own message in validation

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.update(
            validate_model_configuration(
                project=current_value(self, attrs, "project"),
                name=current_value(self, attrs, "name"),
                recommender_class_name=current_value(self, attrs, "recommender_class_name"),
                parameters_json=current_value(self, attrs, "parameters_json"),
                instance=self.instance,
            )
        )
        return attrs


class ModelConfigurationFilter(filters.FilterSet):  # type: ignore[misc]  # django-filter ships no type hints
    tuning_job = filters.NumberFilter(field_name="tuning_job_id")

    class Meta:
        model = ModelConfiguration
        fields = ["project", "tuning_job", "recommender_class_name"]


class ModelConfigurationViewSet(OwnedModelViewSet[ModelConfiguration]):
    queryset = ModelConfiguration.objects.select_related("project")
    serializer_class = ModelConfigurationSerializer
    filterset_class = ModelConfigurationFilter

    # Not a list of configurations: the schema says what the action really returns.
    @extend_schema(
        responses=inline_serializer(
            "RecommenderClasses",
            {"recommenders": serializers.ListField(child=serializers.CharField())},
        ),
        filters=False,
    )
    @action(detail=False, methods=["get"], pagination_class=None, filterset_class=None)
    def recommenders(self, request: Request) -> Response:
        """The irspack recommender classes Recotem offers (valid `recommender_class_name`s)."""
        return Response({"recommenders": available_recommenders()})


class TrainedModelSerializer(SameProjectMixin, serializers.ModelSerializer[TrainedModel]):
    same_project_fields = ("configuration", "data_loc")

    project = OwnedPrimaryKeyRelatedField(
        queryset=Project.objects.all(), project_path="", required=False
    )
    configuration = OwnedPrimaryKeyRelatedField(queryset=ModelConfiguration.objects.all())
    data_loc = OwnedPrimaryKeyRelatedField(queryset=TrainingData.objects.all())
    recommender_class_name = serializers.CharField(
        source="configuration.recommender_class_name", read_only=True
    )

    class Meta:
        model = TrainedModel
        # Written by training, never by a request: everything but what the model is made from.
        read_only_fields = [
            "id",
            "class_name",
            "parameters",
            "status",
            "filesize",
            "test_metrics",
            "timings",
            "irspack_version",
            "training_time",
            "data_fingerprint",
            "error",
            "started_at",
            "completed_at",
            "created_at",
        ]
        fields = [
            "id",
            "project",
            "configuration",
            "data_loc",
            "recommender_class_name",
            *(name for name in read_only_fields if name != "id"),
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "project" not in attrs and attrs.get("configuration") is not None:
            attrs["project"] = attrs["configuration"].project
        return super().validate(attrs)


class SampleQuerySerializer(serializers.Serializer[Any]):
    user_id = serializers.CharField()
    cutoff = serializers.IntegerField(required=False, default=10, min_value=1, max_value=1000)


class TrainedModelViewSet(OwnedModelViewSet[TrainedModel]):
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
                "This model is still used (e.g. by a deployment slot); remove that first.",
                status=409,
            ) from None

    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        """The signed artifact, streamed as stored."""
        model = self.get_object()
        if not model.file:
            raise ApplicationError(
                f"Model #{model.pk} is {model.status}; it has no artifact yet.", field="status"
            )
        return FileResponse(
            model.file.open("rb"),
            as_attachment=True,
            filename=f"recotem-model-{model.pk}.rctm",
            content_type="application/octet-stream",
        )

    @action(detail=True, methods=["get"])
    def sample_recommendation(self, request: Request, pk: str | None = None) -> Response:
        """Top items for a known user (`?user_id=U&cutoff=10`), excluding items the user already has."""
        model = self.get_object()
        query = SampleQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(
            services.sample_recommendation(
                trained_model=model,
                user_id=query.validated_data["user_id"],
                cutoff=query.validated_data["cutoff"],
            )
        )
