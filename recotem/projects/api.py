from __future__ import annotations

from typing import Any

import pandas as pd
from django.http import FileResponse
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.accounts.models import ApiKey
from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField
from recotem.core.files import local_file
from recotem.ml.data import InteractionDataError, read_table
from recotem.projects import services
from recotem.projects.models import ItemMetaData, Project, TrainingData
from recotem.projects.validation import validate_project_fields


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "user_column", "item_column", "time_column", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        def current(field: str) -> str:
            return attrs.get(field, getattr(self.instance, field, ""))

        validate_project_fields(
            owner=self.context["request"].user,
            instance=self.instance,
            **{f: current(f) for f in ("name", "user_column", "item_column", "time_column")},
        )
        return attrs


class ProjectViewSet(OwnedModelViewSet):
    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    project_path = ""
    filterset_fields = ("name",)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        if isinstance(self.request.auth, ApiKey):
            raise serializers.ValidationError(
                {"non_field_errors": ["API keys are bound to one project and cannot create projects."]}
            )
        serializer.save(owner=self.request.user)

    def perform_destroy(self, instance: Project) -> None:
        services.project_delete(project=instance)


class _UploadSerializer(serializers.ModelSerializer):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    file = serializers.FileField(write_only=True)


class TrainingDataSerializer(_UploadSerializer):
    class Meta:
        model = TrainingData
        fields = [
            "id", "project", "file", "original_name", "filesize", "row_count", "n_users",
            "n_items", "fingerprint", "data_source", "created_at",
        ]
        read_only_fields = [
            "id", "original_name", "filesize", "row_count", "n_users", "n_items",
            "fingerprint", "data_source", "created_at",
        ]


class ItemMetaDataSerializer(_UploadSerializer):
    class Meta:
        model = ItemMetaData
        fields = ["id", "project", "file", "original_name", "filesize", "row_count", "columns", "created_at"]
        read_only_fields = ["id", "original_name", "filesize", "row_count", "columns", "created_at"]


def _preview(instance: TrainingData | ItemMetaData, n: int) -> dict[str, Any]:
    project = instance.project
    try:
        with local_file(instance.file) as path:
            df = read_table(
                path,
                required_columns=[],
                string_columns=[project.user_column, project.item_column],
                original_name=instance.original_name,
                all_columns=True,
            )
    except InteractionDataError as exc:
        return {"columns": [], "rows": [], "error": str(exc)}
    head = df.head(n)
    head = head.astype(object).where(pd.notna(head), None)
    return {"columns": [str(c) for c in head.columns], "rows": head.values.tolist()}


class _UploadViewSet(OwnedModelViewSet):
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

    def perform_destroy(self, instance: Any) -> None:
        services.stored_object_delete(instance=instance)

    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        instance = self.get_object()
        return FileResponse(instance.file.open("rb"), as_attachment=True, filename=instance.original_name)

    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        try:
            n = max(1, min(int(request.query_params.get("n", 20)), 200))
        except ValueError:
            return Response({"n": ["Must be an integer."]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(_preview(self.get_object(), n))


class TrainingDataViewSet(_UploadViewSet):
    queryset = TrainingData.objects.select_related("project")
    serializer_class = TrainingDataSerializer
    create_service = staticmethod(services.training_data_create)


class ItemMetaDataViewSet(_UploadViewSet):
    queryset = ItemMetaData.objects.select_related("project")
    serializer_class = ItemMetaDataSerializer
    create_service = staticmethod(services.item_meta_data_create)

