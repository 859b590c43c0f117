"""Query-string filters that cannot tell another user's object from a missing one.

django-filter validates a related id (``?project=1``) against every row of the related
table: a missing id is a 400 while another user's id passes and filters to an empty page,
which tells the two apart. Here the choices of every related-object filter are narrowed to
what the caller may see (``owned_queryset``), so both get the same 400 message.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from django_filters import ModelChoiceFilter, ModelMultipleChoiceFilter
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.request import Request


def owned_choices(request: Request, queryset: QuerySet[Any]) -> QuerySet[Any]:
    """``queryset`` restricted to the caller's objects, for models that belong to a project
    (a ``project`` field) or that are a project (an ``owner`` field); others unchanged."""
    # Imported here: DRF reads DEFAULT_FILTER_BACKENDS (this module) while core.api's own
    # imports (DRF's generic views) are still loading.
    from recotem.core.api import owned_queryset

    model: type[Model] = queryset.model
    names = {f.name for f in model._meta.get_fields()}
    if "owner" in names:
        return owned_queryset(request, queryset, "")
    if "project" in names:
        return owned_queryset(request, queryset, "project")
    return queryset


class OwnedFilterBackend(DjangoFilterBackend):  # type: ignore[misc]  # django-filter ships no types
    def get_filterset(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            for name, flt in filterset.filters.items():
                if isinstance(flt, ModelChoiceFilter | ModelMultipleChoiceFilter):
                    choices = flt.get_queryset(request)
                    flt.queryset = owned_choices(request, choices)
                    filterset.filters[name] = flt
        return filterset
