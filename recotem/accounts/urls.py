from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter
from rest_framework_simplejwt.views import TokenRefreshView

from recotem.accounts.api import ApiKeyViewSet, LoginView, MeView

router = DefaultRouter()
router.register("api_keys", ApiKeyViewSet, basename="api_keys")
urlpatterns = [
    path("auth/login/", LoginView.as_view(), name="login"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("auth/user/", MeView.as_view(), name="me"),
    *router.urls,
]
