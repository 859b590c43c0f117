"""Helpers shared by the UI views: ownership checks and error mapping."""

from __future__ import annotations

from typing import Any, TypeVar

from django import forms
from django.core.paginator import Page, Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from recotem.core.exceptions import ApplicationError
from recotem.front.http import AuthenticatedHttpRequest
from recotem.projects.models import Project

_M = TypeVar("_M", bound=Model)


def get_project(request: AuthenticatedHttpRequest, pk: int) -> Project:
    """The caller's project, or 404 (never 403: do not reveal other users' ids)."""
    return get_object_or_404(Project, pk=pk, owner=request.user)


def project_context(project: Project, section: str, **extra: Any) -> dict[str, Any]:
    return {"project": project, "section": section, **extra}


def add_service_error(form: forms.BaseForm, exc: Exception) -> None:
    """Show a service error on the form field it names (or on the form as a whole)."""
    if isinstance(exc, ApplicationError):
        field = exc.field if exc.field in form.fields else None
        form.add_error(field, exc.message)
        return
    messages = getattr(exc, "message_dict", None)
    if messages:
        for field, errs in messages.items():
            for err in errs:
                form.add_error(field if field in form.fields else None, err)
        return
    form.add_error(None, str(exc))


def paginate(request: HttpRequest, queryset: QuerySet[_M], per_page: int = 20) -> Page[_M]:
    """A page of `queryset`; bad or out-of-range page numbers fall back instead of failing."""
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))
