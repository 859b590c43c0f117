"""API error shape: always `{"field": ["message"]}` (or `{"detail": "..."}`), never a 500 for bad input."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApplicationError(Exception):
    """A domain error with a message a person understands; becomes HTTP 400 (or `status`)."""

    def __init__(self, message: str, *, field: str = "non_field_errors", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


class InvalidInput(ApplicationError, DjangoValidationError):
    """Field errors found by a validation rule (`recotem.core.validation`).

    One exception for every door: the API answers 400 with every field, a form shows each
    message on its field (it is a Django ValidationError), and a service caller sees an
    ApplicationError naming the first field.
    """

    message: str  # always the first field's text, never a lazy string

    def __init__(self, errors: dict[str, list[str]]) -> None:
        field = next(iter(errors))
        ApplicationError.__init__(self, errors[field][0], field=field)
        DjangoValidationError.__init__(self, errors)
        self.message = errors[field][0]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "message_dict"):
            exc = exceptions.ValidationError(exc.message_dict)
        else:
            exc = exceptions.ValidationError({"non_field_errors": exc.messages})
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, ProtectedError | RestrictedError):
        used_by = (
            sorted({type(obj)._meta.verbose_name for obj in exc.args[1]})
            if len(exc.args) > 1
            else []
        )
        detail = "It is still in use" + (f" by: {', '.join(used_by)}" if used_by else "") + "."
        return Response({"detail": f"This object cannot be deleted. {detail}"}, status=409)
    elif isinstance(exc, ApplicationError):
        # "detail" is DRF's key for an error about the request as a whole: a string, as DRF's own.
        body = {"detail": exc.message} if exc.field == "detail" else {exc.field: [exc.message]}
        return Response(body, status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        if isinstance(response.data, list):
            response.data = {"non_field_errors": response.data}
    return response
