"""The console's pages (login, the single-page console) and its two small read-only endpoints: its static
assets and executions per day for an agent's chart. Everything else the page shows comes from /api/v1/."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import condition, require_GET

from apps.agents.api.exceptions import error_body
from apps.agents.selectors import agent_get_visible
from apps.console.assets import get_asset
from apps.console.selectors import MAX_DAYS, executions_per_day

DEFAULT_DAYS = 14

# Everything the console loads comes from this origin: no CDN, no inline script or style. A browser that
# follows this policy refuses anything else, which is also how the browser test proves nothing leaks out.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

View = Callable[..., HttpResponse]


def with_csp(view: View) -> View:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.setdefault("Referrer-Policy", "same-origin")
        return response

    return wrapped


class LoginView(auth_views.LoginView):
    template_name = "console/login.html"
    redirect_authenticated_user = True
    next_page = "console:home"


class LogoutView(auth_views.LogoutView):
    next_page = "console:login"


login = with_csp(LoginView.as_view())
logout = LogoutView.as_view()


@with_csp
@login_required(login_url="console:login")
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "console/index.html", {"chart_days": DEFAULT_DAYS})


def _asset_etag(request: HttpRequest, name: str) -> str | None:
    asset = get_asset(name)
    return asset.etag if asset is not None else None


@require_GET
@condition(etag_func=_asset_etag)
def asset(request: HttpRequest, name: str) -> HttpResponse:
    found = get_asset(name)
    if found is None:
        raise Http404(name)
    response = HttpResponse(found.body, content_type=found.content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
def agent_daily(request: HttpRequest, key: str) -> JsonResponse:
    """GET /console/api/agents/{slug or id}/daily/?days=14 -> {"agent", "timezone", "days": [{date, total,
    completed, failed, cancelled}]}. Same visibility as the API: someone else's private agent is a 404."""
    if not request.user.is_authenticated:
        return JsonResponse(
            error_body("not_authenticated", "Authentication credentials were not provided."), status=401
        )
    raw_days = request.GET.get("days", str(DEFAULT_DAYS))
    if not raw_days.isdigit() or not 1 <= int(raw_days) <= MAX_DAYS:
        message = f"days must be an integer from 1 to {MAX_DAYS}."
        return JsonResponse(error_body("invalid", message, {"days": [message]}), status=400)
    agent = agent_get_visible(user=request.user, key=key)
    if agent is None:
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    counts = executions_per_day(agent=agent, days=int(raw_days))
    return JsonResponse(
        {
            "agent": agent.agent_id,
            "timezone": timezone.get_current_timezone_name(),
            "days": [count.to_dict() for count in counts],
        }
    )
