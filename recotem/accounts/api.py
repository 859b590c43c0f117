from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import RefreshToken

from recotem.accounts.models import ApiKey
from recotem.accounts.services import api_key_create, api_key_revoke, normalize_scopes
from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField
from recotem.core.exceptions import ApplicationError
from recotem.projects.models import Project


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "email", "is_staff"]


class LoginView(APIView):
    """Exchange a username and password for a JWT pair. Rate-limited per client address."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, **data.validated_data)
        if user is None or not user.is_active:
            return Response(
                {"non_field_errors": ["Unable to log in with the provided credentials."]},
                status=status.HTTP_401_UNAUTHORIZED,
            )
        refresh = RefreshToken.for_user(user)
        body: dict[str, Any] = {
            "access": str(refresh.access_token),
            "refresh": str(refresh),
            "user": UserSerializer(user).data,
        }
        return Response(body)


class MeView(APIView):
    api_key_allowed = False

    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)


class ApiKeySerializer(serializers.ModelSerializer):
    """`key` (the secret) appears only in the response to the create request."""

    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    scopes = serializers.ListField(child=serializers.CharField(), allow_empty=False)
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "project", "name", "prefix", "scopes", "expires_at", "revoked_at",
            "last_used_at", "created_at", "is_active",
        ]
        read_only_fields = ["id", "prefix", "revoked_at", "last_used_at", "created_at", "is_active"]

    def get_is_active(self, obj: ApiKey) -> bool:
        return obj.is_usable()

    def validate_scopes(self, value: list[str]) -> list[str]:
        try:
            return normalize_scopes(value)
        except ApplicationError as exc:
            raise serializers.ValidationError(exc.message) from None


class ApiKeyViewSet(OwnedModelViewSet):
    """Project-scoped API keys. Keys themselves cannot manage keys (`api_key_allowed = False`).

    DELETE revokes (the row stays, so `last_used_at` and the audit trail survive).
    """

    api_key_allowed = False
    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer
    filterset_fields = ("project",)
    http_method_names = ["get", "post", "delete", "head", "options"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = api_key_create(
            project=data["project"],
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
            created_by=request.user,
        )
        body = {**self.get_serializer(key).data, "key": raw}
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        api_key_revoke(key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: Any = None) -> Response:
        key = api_key_revoke(key=self.get_object())
        return Response(self.get_serializer(key).data)
