from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from recotem.accounts.models import ApiKey


class IsOwnerOrScopedKey(permissions.BasePermission):
    """Users reach their own objects (querysets do the filtering); API keys need a scope.

    Keys need `read` for safe methods and `write` for the rest, and are refused on views
    that set `api_key_allowed = False` (managing keys and users).
    """

    message = "Authentication credentials were not provided or lack the needed scope."

    def has_permission(self, request: Request, view: Any) -> bool:
        key = request.auth
        if isinstance(key, ApiKey):
            if not getattr(view, "api_key_allowed", True):
                self.message = "API keys cannot manage API keys or users."
                return False
            needed = (
                ApiKey.Scope.READ
                if request.method in permissions.SAFE_METHODS
                else ApiKey.Scope.WRITE
            )
            if needed not in key.scopes:
                self.message = f"This API key lacks the '{needed}' scope."
                return False
            return True
        return bool(request.user and request.user.is_authenticated)
