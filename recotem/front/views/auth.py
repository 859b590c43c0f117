"""Session sign-in and sign-out (CSRF-protected; sign-out is POST only)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views

from recotem.front.forms import LoginForm


class LoginView(auth_views.LoginView):
    template_name = "front/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass
