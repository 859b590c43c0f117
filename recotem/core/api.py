"""Building blocks every domain API uses: ownership-scoped querysets and related fields."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Field, Model, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from recotem.core import health
from recotem.core.auth import scoped_project_id

_M = TypeVar("_M", bound=Model)


class PingView(APIView):
    """Liveness of the API plus what the background processes last reported."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response({"success": True, **health.process_status()})


def owned_queryset(
    request: Request, queryset: QuerySet[_M], project_path: str = "project"
) -> QuerySet[_M]:
    """Restrict `queryset` to objects of projects the caller may see.

    A JWT/session user sees their own projects; an API key sees only its project.
    """
    prefix = f"{project_path}__" if project_path else ""
    key_project_id = scoped_project_id(request)
    if key_project_id is not None:
        return queryset.filter(**{f"{prefix}id": key_project_id})
    if not request.user or not request.user.is_authenticated:
        return queryset.none()
    return queryset.filter(**{f"{prefix}owner": request.user})


def current_value(
    serializer: serializers.ModelSerializer[Any], attrs: dict[str, Any], field: str
) -> Any:
    """The value a write will leave: the request's, else the instance's, else the model default.

    What a serializer's `validate` hands a validation rule, so a PATCH is checked as a whole.
    (Any: the type is the named model field's, chosen at run time by `field`.)
    """
    if field in attrs:
        return attrs[field]
    if serializer.instance is not None:
        return getattr(serializer.instance, field)
    model: type[Model] = serializer.Meta.model
    model_field = model._meta.get_field(field)
    assert isinstance(model_field, Field), f"{field!r} is a reverse relation, which has no value"
    return model_field.get_default()


def bounded_int(bounds: tuple[int, int], *, allow_null: bool = False) -> serializers.IntegerField:
    """An optional integer within a validation module's ``(low, high)`` bounds (400 outside)."""
    return serializers.IntegerField(
        min_value=bounds[0], max_value=bounds[1], required=False, allow_null=allow_null
    )


class OwnedPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField[Model]):
    """A related id that must belong to the caller: a foreign id is "does not exist" (400)."""

    def __init__(self, *, project_path: str = "project", **kwargs: Any) -> None:
        self.project_path = project_path
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet[Model]:
        queryset = super().get_queryset()
        # DRF asks for choices only on a writable field, and a writable one must have a queryset.
        assert queryset is not None, "OwnedPrimaryKeyRelatedField needs a queryset"
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


class OwnedModelViewSet(viewsets.ModelViewSet[_M]):
    """CRUD over objects of the caller's projects; a foreign id in the URL is a 404."""

    project_path = "project"
    filterset_fields: tuple[str, ...] = ("project",)

    def get_queryset(self) -> QuerySet[_M]:
        return owned_queryset(self.request, super().get_queryset(), self.project_path)

    def perform_update(self, serializer: serializers.BaseSerializer[_M]) -> None:
        # Objects never move between projects: what references them would end up cross-project.
        new_project = serializer.validated_data.get("project")
        if new_project is not None and new_project.pk != getattr(
            serializer.instance, "project_id", new_project.pk
        ):
            raise serializers.ValidationError(
                {"project": ["An object cannot be moved to another project."]}
            )
        super().perform_update(serializer)
