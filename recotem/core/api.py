"""Building blocks every domain API uses: ownership-scoped querysets and related fields."""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from rest_framework import serializers, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from recotem.core import health


class PingView(APIView):
    """Liveness of the API plus what the background processes last reported."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    def get(self, request: Request) -> Response:
        return Response({"success": True, **health.process_status()})


def owned_queryset(request: Request, queryset: QuerySet[Any], project_path: str = "project") -> QuerySet[Any]:
    """Restrict `queryset` to objects of projects the caller may see.

    A JWT/session user sees their own projects; an API key sees only its project.
    """
    key = getattr(request, "auth", None)
    from recotem.accounts.models import ApiKey

    prefix = f"{project_path}__" if project_path else ""
    if isinstance(key, ApiKey):
        return queryset.filter(**{f"{prefix}id" if prefix else "id": key.project_id})
    if not request.user or not request.user.is_authenticated:
        return queryset.none()
    return queryset.filter(**{f"{prefix}owner": request.user})


class OwnedPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """A related id that must belong to the caller: a foreign id is "does not exist" (400)."""

    def __init__(self, *, project_path: str = "project", **kwargs: Any) -> None:
        self.project_path = project_path
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        request = self.context.get("request")
        if request is None:
            return queryset.none()
        return owned_queryset(request, queryset, self.project_path)


class SameProjectMixin:
    """Serializer mixin: every related object named in `same_project_fields` belongs to `project`."""

    same_project_fields: tuple[str, ...] = ()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)  # type: ignore[misc]
        project = attrs.get("project") or getattr(getattr(self, "instance", None), "project", None)
        for name in self.same_project_fields:
            related: Model | None = attrs.get(name)
            if related is not None and project is not None and related.project_id != project.id:  # type: ignore[attr-defined]
                raise serializers.ValidationError({name: ["Must belong to the same project."]})
        return attrs


class OwnedModelViewSet(viewsets.ModelViewSet):
    """CRUD over objects of the caller's projects; a foreign id in the URL is a 404."""

    project_path = "project"
    filterset_fields: tuple[str, ...] = ("project",)

    def get_queryset(self) -> QuerySet[Any]:
        return owned_queryset(self.request, super().get_queryset(), self.project_path)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        # Objects never move between projects: what references them would end up cross-project.
        new_project = serializer.validated_data.get("project")
        if new_project is not None and new_project.pk != getattr(serializer.instance, "project_id", new_project.pk):
            raise serializers.ValidationError({"project": ["An object cannot be moved to another project."]})
        super().perform_update(serializer)
