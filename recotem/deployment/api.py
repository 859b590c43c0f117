from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField, SameProjectMixin
from recotem.core.jobs import JobStatus
from recotem.deployment import services
from recotem.deployment.models import DeploymentSlot, SlotHistory
from recotem.projects.models import Project
from recotem.training.models import TrainedModel


class SlotHistorySerializer(serializers.ModelSerializer[SlotHistory]):
    trained_model = serializers.IntegerField(source="trained_model_id", read_only=True)
    previous_model = serializers.IntegerField(
        source="previous_model_id", read_only=True, allow_null=True
    )

    class Meta:
        model = SlotHistory
        fields = ["id", "slot", "trained_model", "previous_model", "changed_by", "changed_at"]


class DeploymentSlotSerializer(SameProjectMixin, serializers.ModelSerializer[DeploymentSlot]):
    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    trained_model = OwnedPrimaryKeyRelatedField(queryset=TrainedModel.objects.all())
    weight = serializers.IntegerField(min_value=0, max_value=100, default=100)
    same_project_fields = ("trained_model",)

    class Meta:
        model = DeploymentSlot
        fields = [
            "id",
            "project",
            "name",
            "trained_model",
            "weight",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        validators: list[
            Any
        ] = []  # uniqueness of the name is checked by the service (clear message)

    def validate_trained_model(self, value: TrainedModel) -> TrainedModel:
        if value.status != JobStatus.COMPLETED or not value.file:
            raise serializers.ValidationError("Only a completed trained model can be deployed.")
        return value

    def validate_project(self, value: Project) -> Project:
        if self.instance is not None and value.id != self.instance.project_id:
            raise serializers.ValidationError("A slot cannot move to another project.")
        return value


class DeploymentSlotViewSet(OwnedModelViewSet[DeploymentSlot]):
    """Weighted slots serving trained models; `rollback` points a slot back at its previous model."""

    queryset = DeploymentSlot.objects.select_related("trained_model").all()
    serializer_class = DeploymentSlotSerializer
    filterset_fields = ("project", "is_active", "trained_model")

    def perform_create(self, serializer: serializers.BaseSerializer[DeploymentSlot]) -> None:
        data = serializer.validated_data
        serializer.instance = services.slot_create(
            project=data["project"],
            name=data["name"],
            trained_model=data["trained_model"],
            weight=data.get("weight", 100),
            is_active=data.get("is_active", True),
        )

    def perform_update(self, serializer: serializers.BaseSerializer[DeploymentSlot]) -> None:
        data = dict(serializer.validated_data)
        data.pop("project", None)
        assert serializer.instance is not None  # an update always has the object it changes
        serializer.instance = services.slot_update(slot=serializer.instance, data=data)

    def perform_destroy(self, instance: DeploymentSlot) -> None:
        services.slot_delete(slot=instance)

    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: Any = None) -> Response:
        slot = services.slot_rollback(slot=self.get_object())
        return Response(self.get_serializer(slot).data, status=status.HTTP_200_OK)

    # A page of history entries, not a slot: without this the schema promised a slot here.
    @extend_schema(
        responses=inline_serializer(
            "PaginatedSlotHistoryList",
            {
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": SlotHistorySerializer(many=True),
            },
        )
    )
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: Any = None) -> Response:
        slot = self.get_object()
        entries: QuerySet[SlotHistory] = slot.history.order_by("-id")
        # The stub ties pagination to the viewset's own model; DRF paginates any queryset.
        page: list[SlotHistory] | None = self.paginate_queryset(entries)  # type: ignore[arg-type]
        if page is not None:
            return self.get_paginated_response(SlotHistorySerializer(page, many=True).data)
        return Response(SlotHistorySerializer(entries, many=True).data)
