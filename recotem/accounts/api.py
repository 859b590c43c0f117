from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.views import TokenRefreshView

from recotem.accounts.models import ApiKey
from recotem.accounts.services import api_key_create, api_key_revoke, normalize_scopes
from recotem.accounts.tokens import LogoutSerializer, RefreshSerializer, tokens_issue
from recotem.core.api import OwnedModelViewSet, OwnedPrimaryKeyRelatedField
from recotem.core.exceptions import ApplicationError
from recotem.projects.models import Project


class UserSerializer(serializers.ModelSerializer[User]):
    class Meta:
        model = User
        fields = ["id", "username", "email", "is_staff"]


class TokenPairSerializer(serializers.Serializer[Any]):
    access = serializers.CharField()
    refresh = serializers.CharField()
    user = UserSerializer()


def _no_store(response: Response) -> Response:
    """Responses that carry a secret (tokens, a raw key) must not be kept by any cache."""
    add_never_cache_headers(response)  # Cache-Control: max-age=0, no-cache, no-store, ...
    return response


class LoginView(APIView):
    """Exchange a username and password for a JWT pair.

    Goes through Django's ``authenticate`` with the underlying request, so the same lockout
    (django-axes, per username and per client address) guards this door as /login/ and
    /admin/login/: while locked, even the right password gets 429.
    """

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema_serializer(component_name="LoginInput")
    class InputSerializer(serializers.Serializer[Any]):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(
            max_length=4096, style={"input_type": "password"}, trim_whitespace=False
        )

    @extend_schema(request=InputSerializer, responses={200: TokenPairSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request._request, **data.validated_data)
        if user is None or not user.is_active:
            # A lockout is answered by the axes middleware (429), whatever is returned here.
            return Response(
                {"non_field_errors": ["Unable to log in with the provided credentials."]},
                status=status.HTTP_401_UNAUTHORIZED,
            )
        body: dict[str, Any] = {**tokens_issue(user=user), "user": UserSerializer(user).data}
        return _no_store(Response(body))


class RefreshView(TokenRefreshView):
    """A new access token and a new refresh token; the one sent is blacklisted (rotation)."""

    serializer_class = RefreshSerializer

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return _no_store(super().post(request, *args, **kwargs))


class LogoutView(APIView):
    """Revoke a refresh token (blacklist it). Access tokens end with their short lifetime."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(request=LogoutSerializer, responses={204: None})
    def post(self, request: Request) -> Response:
        serializer = LogoutSerializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except TokenError as exc:
            return Response({"refresh": [str(exc.args[0])]}, status=status.HTTP_401_UNAUTHORIZED)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordChangeView(APIView):
    """Change the caller's password: every older token stops working, a new pair is returned.

    The old password is checked through ``authenticate`` so guessing it counts towards the
    same lockout as a login.
    """

    api_key_allowed = False

    @extend_schema_serializer(component_name="PasswordChangeInput")
    class InputSerializer(serializers.Serializer[Any]):
        old_password = serializers.CharField(max_length=4096, trim_whitespace=False)
        new_password = serializers.CharField(max_length=4096, trim_whitespace=False)

    @extend_schema(request=InputSerializer, responses={200: TokenPairSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request.user
        checked = authenticate(
            request._request,
            username=user.get_username(),
            password=data.validated_data["old_password"],
        )
        if checked is None or checked.pk != user.pk:
            return Response(
                {"old_password": ["The current password is not correct."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            validate_password(data.validated_data["new_password"], user)
        except DjangoValidationError as exc:
            return Response({"new_password": exc.messages}, status=status.HTTP_400_BAD_REQUEST)
        user.set_password(data.validated_data["new_password"])
        user.save()  # the signal blacklists every refresh token issued before
        body: dict[str, Any] = {**tokens_issue(user=user), "user": UserSerializer(user).data}
        return _no_store(Response(body))


class MeView(APIView):
    api_key_allowed = False

    @extend_schema(responses=UserSerializer)
    def get(self, request: Request) -> Response:
        # IsOwnerOrScopedKey lets only a logged-in user (no API key) reach this view.
        assert isinstance(request.user, User)
        return Response(UserSerializer(request.user).data)


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    """`key` (the secret) appears only in the response to the create request."""

    project = OwnedPrimaryKeyRelatedField(queryset=Project.objects.all(), project_path="")
    scopes = serializers.ListField(child=serializers.CharField(), allow_empty=False)
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "project",
            "name",
            "prefix",
            "scopes",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "created_at",
            "is_active",
        ]
        read_only_fields = ["id", "prefix", "revoked_at", "last_used_at", "created_at", "is_active"]

    def get_is_active(self, obj: ApiKey) -> bool:
        return obj.is_usable()

    def validate_scopes(self, value: list[str]) -> list[str]:
        try:
            return normalize_scopes(value)
        except ApplicationError as exc:
            raise serializers.ValidationError(exc.message) from None


class ApiKeyViewSet(OwnedModelViewSet[ApiKey]):
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
        return _no_store(Response(body, status=status.HTTP_201_CREATED))

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        api_key_revoke(key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: Any = None) -> Response:
        key = api_key_revoke(key=self.get_object())
        return Response(self.get_serializer(key).data)
