from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import QuerySet
from django.http import FileResponse
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField, owned_queryset
from recotem.core.auth import scoped_project_id
from recotem.core.exceptions import ApplicationError
from recotem.core.files import local_file
from recotem.core.models import TaskLog
from recotem.ml.datafile import DataLimitExceeded, InteractionDataError
from recotem.projects import services, sources
from recotem.projects.limits import data_limits, limit_message
from recotem.projects.models import DataSource, ItemMetaData, Project, TrainingData
from recotem.projects.validation import validate_project_fields

_Upload = TypeVar("_Upload", TrainingData, ItemMetaData)


class ProjectSerializer(serializers.ModelSerializer[Project]):
    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "user_column",
            "item_column",
            "time_column",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        def current(field: str) -> str:
            value: str = attrs.get(field, getattr(self.instance, field, ""))
            return value

        validate_project_fields(
            owner=self.context["request"].user,
            instance=self.instance,
            **{f: current(f) for f in ("name", "user_column", "item_column", "time_column")},
        )
        return attrs


class ProjectViewSet(OwnedModelViewSet[Project]):
    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    project_path = ""
    filterset_fields = ("name",)

    def perform_create(self, serializer: serializers.BaseSerializer[Project]) -> None:
        if scoped_project_id(self.request) is not None:
            raise serializers.ValidationError(
                {
                    "non_field_errors": [
                        "API keys are bound to one project and cannot create projects."
                    ]
                }
            )
        serializer.save(owner=self.request.user)

    def perform_destroy(self, instance: Project) -> None:
        services.project_delete(project=instance)


class _UploadSerializer(serializers.ModelSerializer[_Upload]):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    file = serializers.FileField(write_only=True)


class TrainingDataSerializer(_UploadSerializer[TrainingData]):
    class Meta:
        model = TrainingData
        fields = [
            "id",
            "project",
            "file",
            "original_name",
            "filesize",
            "row_count",
            "n_users",
            "n_items",
            "fingerprint",
            "data_source",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "original_name",
            "filesize",
            "row_count",
            "n_users",
            "n_items",
            "fingerprint",
            "data_source",
            "created_at",
        ]


class ItemMetaDataSerializer(_UploadSerializer[ItemMetaData]):
    class Meta:
        model = ItemMetaData
        fields = [
            "id",
            "project",
            "file",
            "original_name",
            "filesize",
            "row_count",
            "columns",
            "created_at",
        ]
        read_only_fields = ["id", "original_name", "filesize", "row_count", "columns", "created_at"]


def _preview(instance: TrainingData | ItemMetaData, n: int) -> dict[str, Any]:
    """The first ``n`` rows, reading only the start of the file (never the whole of it)."""
    import pandas as pd  # the data stack loads in the web process only when a preview is asked

    from recotem.ml.data import read_preview

    project = instance.project
    try:
        with local_file(instance.file) as path:
            head = read_preview(
                path,
                n,
                string_columns=[project.user_column, project.item_column],
                original_name=instance.original_name,
                max_uncompressed_bytes=data_limits(path, instance.original_name)[
                    "max_uncompressed_bytes"
                ],
            )
    except DataLimitExceeded as exc:
        return {"columns": [], "rows": [], "error": limit_message(exc)}
    except InteractionDataError as exc:
        return {"columns": [], "rows": [], "error": str(exc)}
    head = head.astype(object).where(pd.notna(head), None)
    return {"columns": [str(c) for c in head.columns], "rows": head.values.tolist()}


class _UploadViewSet(OwnedModelViewSet[_Upload]):
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    http_method_names = ["get", "post", "delete", "head", "options"]
    create_service: Any = None

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        instance = type(self).create_service(
            project=serializer.validated_data["project"], upload=serializer.validated_data["file"]
        )
        return Response(self.get_serializer(instance).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: _Upload) -> None:
        services.stored_object_delete(instance=instance)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        instance = self.get_object()
        return FileResponse(
            instance.file.open("rb"), as_attachment=True, filename=instance.original_name
        )

    # The first rows of the file, not the upload's record: the schema must say so.
    @extend_schema(
        parameters=[OpenApiParameter("n", int, description="rows (1-200, default 20)")],
        responses=inline_serializer(
            "DataPreview",
            {
                "columns": serializers.ListField(child=serializers.CharField()),
                "rows": serializers.ListField(child=serializers.ListField()),
                "error": serializers.CharField(required=False),
            },
        ),
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        try:
            n = max(1, min(int(request.query_params.get("n", 20)), 200))
        except ValueError:
            return Response({"n": ["Must be an integer."]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(_preview(self.get_object(), n))


class TrainingDataViewSet(_UploadViewSet[TrainingData]):
    queryset = TrainingData.objects.select_related("project")
    serializer_class = TrainingDataSerializer
    create_service = staticmethod(services.training_data_create)


class ItemMetaDataViewSet(_UploadViewSet[ItemMetaData]):
    queryset = ItemMetaData.objects.select_related("project")
    serializer_class = ItemMetaDataSerializer
    create_service = staticmethod(services.item_meta_data_create)


# --- data sources: where scheduled runs read fresh interactions ------------------------------


class DataSourceSerializer(serializers.ModelSerializer[DataSource]):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")

    class Meta:
        model = DataSource
        fields = [
            "id",
            "project",
            "kind",
            "url",
            "query",
            "event_types",
            "window_days",
            "last_read_at",
            "last_error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "last_read_at", "last_error", "created_at", "updated_at"]

    def validate_project(self, value: Project) -> Project:
        if self.instance is not None and value.pk != self.instance.project_id:
            raise serializers.ValidationError("A data source cannot move to another project.")
        clash = DataSource.objects.filter(project=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(
                "This project already has a data source; edit that one."
            )
        return value


class DataSourceViewSet(OwnedModelViewSet[DataSource]):
    queryset = DataSource.objects.select_related("project")
    serializer_class = DataSourceSerializer

    def perform_create(self, serializer: serializers.BaseSerializer[DataSource]) -> None:
        serializer.instance = sources.source_create(**serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer[DataSource]) -> None:
        data = dict(serializer.validated_data)
        data.pop("project", None)
        assert serializer.instance is not None  # an update always has the object it changes
        serializer.instance = sources.source_update(source=serializer.instance, **data)

    def perform_destroy(self, instance: DataSource) -> None:
        sources.source_delete(source=instance)

    @extend_schema(
        request=None,
        responses=inline_serializer(
            "DataSourceRead",
            {
                "training_data": serializers.IntegerField(),
                "row_count": serializers.IntegerField(),
                "fingerprint": serializers.CharField(),
            },
        ),
    )
    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Read the source now: a new training-data snapshot if its content changed."""
        source = self.get_object()
        try:
            data = sources.source_read(source=source)
        except sources.SourceError as exc:
            raise ApplicationError(str(exc), field="url") from None
        return Response(
            {"training_data": data.pk, "row_count": data.row_count, "fingerprint": data.fingerprint}
        )


# --- task logs: what the background jobs of a project did --------------------------------------


class TaskLogSerializer(serializers.ModelSerializer[TaskLog]):
    project = serializers.IntegerField(source="project_id", read_only=True)
    tuning_job = serializers.IntegerField(source="tuning_job_id", read_only=True, allow_null=True)
    trained_model = serializers.IntegerField(
        source="trained_model_id", read_only=True, allow_null=True
    )

    class Meta:
        model = TaskLog
        fields = [
            "id",
            "project",
            "task",
            "tuning_job",
            "trained_model",
            "level",
            "contents",
            "created_at",
        ]
        read_only_fields = fields


class TaskLogFilter(filters.FilterSet):  # type: ignore[misc]  # django-filter ships no type hints
    project = filters.NumberFilter(field_name="project_id")
    tuning_job = filters.NumberFilter(field_name="tuning_job_id")
    trained_model = filters.NumberFilter(field_name="trained_model_id")

    class Meta:
        model = TaskLog
        fields = ["project", "task", "tuning_job", "trained_model", "level"]


class TaskLogViewSet(viewsets.ReadOnlyModelViewSet[TaskLog]):
    """Read-only log lines of the caller's projects' tuning jobs and trained models."""

    queryset = TaskLog.objects.all()
    serializer_class = TaskLogSerializer
    filterset_class = TaskLogFilter

    def get_queryset(self) -> QuerySet[TaskLog]:
        projects = owned_queryset(self.request, Project.objects.all(), "")
        return super().get_queryset().filter(project_id__in=projects.values("id"))
