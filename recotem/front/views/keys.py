"""API keys page: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from recotem.accounts import services
from recotem.accounts.models import ApiKey
from recotem.core.exceptions import ApplicationError
from recotem.front.forms import ApiKeyForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, project_context


@login_required
def api_keys(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    form = ApiKeyForm(request.POST or None)
    raw_key = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                _, raw_key = services.api_key_create(
                    project=project,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    created_by=request.user,
                )
                form = ApiKeyForm()
            except ApplicationError as exc:
                add_service_error(form, exc)
        if raw_key is None:
            status = 400
    keys = ApiKey.objects.filter(project=project).order_by("-id")
    # The raw key is rendered in this response only; it is never stored or shown again.
    context = project_context(project, "keys", form=form, keys=keys, raw_key=raw_key)
    response = render(request, "front/api_keys.html", context, status=status)
    # The page may show a raw key: no browser or proxy may keep a copy.
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def api_key_revoke(request: AuthenticatedHttpRequest, pk: int, key_id: int) -> HttpResponse:
    project = get_project(request, pk)
    key = get_object_or_404(ApiKey, pk=key_id, project=project)
    services.api_key_revoke(key=key)
    messages.success(
        request, f"Key “{key.name}” revoked; requests using it are refused from now on."
    )
    return redirect("front:api_keys", project.pk)
