"""Who is calling, may they, and which agent is `model`: the one blocking step of a /v1 request.

OpenAI clients send `Authorization: Bearer <key>`; the key is the user's ordinary API token (the one
`POST /api/v1/auth/token/` returns), so there is one kind of credential for the whole service. `Token <key>`
works too. Cookies (session auth) are deliberately not accepted here: these endpoints are for programs, and a
cookie-authenticated POST would need CSRF protection that OpenAI clients cannot provide.

Authentication, the rate limits (the API's own, so /v1 and /api/v1 share one budget per user) and the agent
lookup are ORM / cache calls: they run together in one `sync_to_async` hop per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from rest_framework import exceptions as drf

from apps.agents.api.authentication import CachedBearerTokenAuthentication, CachedTokenAuthentication
from apps.agents.api.throttling import RunRateThrottle, UserRateThrottle
from apps.agents.models import SLUG_VALIDATOR, Agent
from apps.agents.openai_compat.errors import OpenAIError
from apps.agents.selectors import agents_visible_to
from apps.agents.services.db import admission_slot

MISSING_KEY = (
    "You didn't provide an API key. Send your API token in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_TOKEN); get one from POST /api/v1/auth/token/."
)


AUTHENTICATORS = (CachedBearerTokenAuthentication(), CachedTokenAuthentication())


@dataclass(slots=True)
class Admission:
    user: Any
    agent: Agent | None = None
    agents: list[Agent] | None = None


def authenticate(request: HttpRequest) -> Any:
    """The user behind the request's token. Raises OpenAIError 401 (no key, unknown key, inactive user)."""
    try:
        for authenticator in AUTHENTICATORS:
            found = authenticator.authenticate(request)
            if found is not None:
                return found[0]
    except drf.AuthenticationFailed as exc:
        raise OpenAIError(
            f"Incorrect API key provided: {exc.detail}", status=401, code="invalid_api_key"
        ) from None
    raise OpenAIError(MISSING_KEY, status=401, code=None)


def throttle(request: HttpRequest, *, execute: bool) -> None:
    # A run: the user's rate and the rate of runs, counted in one round trip.
    limiter = RunRateThrottle() if execute else UserRateThrottle()
    if not limiter.allow_request(request, None):
        wait = max(1, int((limiter.wait() or 1) + 0.999))
        raise OpenAIError(
            f"Rate limit reached for your account; try again in {wait} s.",
            status=429,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )


def visible_agents(user: Any) -> Any:
    """The agents `user` may run: own and shared (staff: all), active ones, in a stable order."""
    return agents_visible_to(user).filter(is_active=True).order_by("agent_id")


def is_slug(value: Any) -> bool:
    # Checked before any query: a value that cannot be a slug (a NUL byte, 1 MB of text) never reaches SQL.
    return isinstance(value, str) and len(value) <= 100 and SLUG_VALIDATOR.regex.fullmatch(value) is not None


def _admit(request: HttpRequest, model: Any, *, execute: bool, list_models: bool) -> Admission:
    user = authenticate(request)
    # The throttles read request.user; a Django request from AuthenticationMiddleware holds the session's.
    request.user = user
    throttle(request, execute=execute)
    admission = Admission(user=user)
    if is_slug(model):
        # Only slugs: a UUID is the API's other way to name an agent, not a model name.
        admission.agent = agents_visible_to(user).filter(agent_id=model).first()
    if list_models:
        admission.agents = list(visible_agents(user))
    return admission


async def admit(
    request: HttpRequest, *, model: Any = None, execute: bool = False, list_models: bool = False
) -> Admission:
    if not execute:
        return await sync_to_async(_admit)(request, model, execute=execute, list_models=list_models)
    # A run is admitted a few at a time, like the native execute's DRF half (services/db.py, admission_slot).
    async with admission_slot():
        return await sync_to_async(_admit)(request, model, execute=execute, list_models=list_models)
