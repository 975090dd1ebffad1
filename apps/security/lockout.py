"""What a locked-out login gets, and how a failed login is written to the log.

django-axes decides; these are its callables (settings AXES_LOCKOUT_CALLABLE, AXES_CLIENT_STR_CALLABLE):
- the API (`/api/...`) gets 429 with the error envelope and Retry-After, the console and the admin a page
  that says why the login is refused and for how long (429 too, with Retry-After);
- a failure is logged with the username, the client address (apps.security.client_address) and the path,
  JSON-encoded so a hostile username cannot forge log lines. Never the password: axes is only ever handed
  Django's cleansed credentials.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from apps.agents.api.exceptions import API_PREFIX, error_body
from apps.agents.errors import ApplicationError

LOCKED_OUT_CODE = "locked_out"


def lockout_seconds() -> int:
    # Every failed attempt during a lockout restarts it (axes' default), so the full cool-off is exact for
    # the attempt being answered.
    return max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds()))


def lockout_message() -> str:
    minutes = math.ceil(lockout_seconds() / 60)
    return (
        "Too many failed logins for this username or from this address. "
        f"Logins are refused for {minutes} minute{'s' if minutes != 1 else ''}."
    )


class LoginLockedOut(ApplicationError):
    """Raised by the API's login (services/auth.py) so that the 429 does not depend on the middleware."""

    status = 429

    def __init__(self) -> None:
        super().__init__(lockout_message(), code=LOCKED_OUT_CODE)
        self.retry_after = lockout_seconds()


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE. The extra arguments (the original response, the credentials) are not used:
    axes' async middleware passes them in a different order than its sync one."""
    seconds = lockout_seconds()
    if request.path.startswith(API_PREFIX):
        response: HttpResponse = JsonResponse(error_body(LOCKED_OUT_CODE, lockout_message()), status=429)
    else:
        context = {"message": lockout_message(), "minutes": math.ceil(seconds / 60), "retry": request.path}
        response = render(request, "security/locked_out.html", context, status=429)
        response["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


def client_str(username: Any, ip_address: Any, user_agent: Any, path_info: Any, request: Any) -> str:
    """AXES_CLIENT_STR_CALLABLE: the part of axes' log lines that says who failed."""
    path = path_info[0] if isinstance(path_info, list | tuple) else path_info
    return json.dumps({"username": username, "address": ip_address, "path": path}, ensure_ascii=True)
