"""API tokens: `POST /api/v1/auth/token/` trades a username and password for the user's token.

The password is checked by django.contrib.auth.authenticate() with the request, like the console's and the
admin's logins, so django-axes counts the failures per username and per client address and refuses every
attempt, the right password included, while either is locked out (README: Logins and lockout)."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from apps.agents.errors import ApplicationError
from apps.security.lockout import LoginLockedOut


def token_obtain(*, username: str, password: str, request: HttpRequest | None = None) -> str:
    user = authenticate(request=request, username=username, password=password)
    if user is None and getattr(request, "axes_locked_out", False):
        raise LoginLockedOut()
    if user is None or not user.is_active:
        # One message for "no such user", "wrong password" and "inactive": which one is nobody's business.
        raise ApplicationError(
            "Unable to log in with the provided credentials.", code="invalid_credentials", status=401
        )
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
