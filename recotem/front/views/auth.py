"""Session sign-in and sign-out (CSRF-protected; sign-out is POST only), password change.

Sign-in goes through Django's ``authenticate`` with the request, so the login lockout
(django-axes, ``recotem.accounts.lockout``) guards this page like the admin and the API.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import authenticate
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse_lazy

from recotem.front.forms import LoginForm


class LoginView(auth_views.LoginView):
    template_name = "front/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


class LockedPasswordChangeForm(PasswordChangeForm):
    """Checks the old password through ``authenticate``, so guessing it with a stolen session
    counts towards the login lockout like any sign-in (Django's form would not count it)."""

    def __init__(self, user: Any, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)

    def clean_old_password(self) -> str:
        old_password: str = self.cleaned_data["old_password"]
        checked = authenticate(
            self.request, username=self.user.get_username(), password=old_password
        )
        if checked is None or checked.pk != self.user.pk:
            raise ValidationError(
                self.error_messages["password_incorrect"], code="password_incorrect"
            )
        return old_password


class PasswordChangeView(auth_views.PasswordChangeView):
    """Change the signed-in user's password. This session stays signed in; every other
    session and every API token of the user stops working (recotem.accounts.signals)."""

    template_name = "front/password_change.html"
    success_url = reverse_lazy("front:project_list")
    form_class = LockedPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form: PasswordChangeForm) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(
            self.request, "Password changed. Other sessions and API tokens were signed out."
        )
        return response
