from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from recotem.accounts.api import (
    ApiKeyViewSet,
    LoginView,
    LogoutView,
    MeView,
    PasswordChangeView,
    RefreshView,
)

router = DefaultRouter()
router.register("api_keys", ApiKeyViewSet, basename="api_keys")
urlpatterns = [
    path("auth/login/", LoginView.as_view(), name="login"),
    path("auth/token/refresh/", RefreshView.as_view(), name="token-refresh"),
    path("auth/logout/", LogoutView.as_view(), name="logout"),
    path("auth/password/", PasswordChangeView.as_view(), name="password-change"),
    path("auth/user/", MeView.as_view(), name="me"),
    *router.urls,
]
