"""API tokens: `POST /api/v1/auth/token/` trades a username and password for the user's token."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from apps.agents.errors import ApplicationError


def token_obtain(*, username: str, password: str, request: HttpRequest | None = None) -> str:
    user = authenticate(request=request, username=username, password=password)
    if user is None or not user.is_active:
        # One message for "no such user", "wrong password" and "inactive": which one is nobody's business.
        raise ApplicationError(
            "Unable to log in with the provided credentials.", code="invalid_credentials", status=401
        )
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
