from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from recotem.core.api import PingView

api_patterns: list[URLPattern | URLResolver] = [
    path("ping/", PingView.as_view(), name="ping"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("recotem.accounts.urls")),
    path("", include("recotem.projects.urls")),
    path("", include("recotem.tuning.urls")),
    path("", include("recotem.training.urls")),
    path("", include("recotem.deployment.urls")),
    path("", include("recotem.retraining.urls")),
    path("", include("recotem.experiments.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
    path("", include("recotem.front.urls")),
]
