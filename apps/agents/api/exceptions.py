"""The API's one exception handler: every error is `{"error": {"code", "message", "fields"?}}`.

DRF calls `api_exception_handler` for anything a DRF view raises (REST_FRAMEWORK["EXCEPTION_HANDLER"]);
Django's own 404/500 pages for /api/ paths (no view matched, or something broke outside a view) are rendered
with the same envelope by `json_page_not_found` / `json_server_error` (handler404/handler500 in
config/urls.py).

A 500 never carries the exception's text: it can hold anything (SQL, a URL with a key in it). The traceback
goes to the log only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import set_rollback

from apps.agents.errors import ApplicationError
from apps.agents.services.db import Overloaded, pool_exhausted

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


def error_body(code: str, message: str, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        # Always {path: [messages]}, whoever raised it (services sometimes give one string).
        error["fields"] = {str(name): _messages(value) for name, value in fields.items()}
    return {"error": error}


def _messages(detail: Any) -> list[str]:
    if isinstance(detail, list | tuple):
        return [str(item) for item in detail]
    return [str(detail)]


def flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail, flat: {"input_data.task": [...], "context.x[3].role": [...]}.

    A dotted path names the offending field however deep it is, which is what a client needs to fix it.
    """
    flat: dict[str, list[str]] = {}
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            # ListField reports items by int index: capabilities[0], like the engine's own messages.
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == api_settings.NON_FIELD_ERRORS_KEY and prefix:
                path = prefix  # a nested object as a whole is wrong: name the object
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_fields(value, path))
    elif isinstance(detail, list | tuple) and any(
        isinstance(item, Mapping | list | tuple) for item in detail
    ):
        for index, value in enumerate(detail):
            if value:  # ListField reports {} / [] for the items that were fine
                flat.update(flatten_fields(value, f"{prefix}[{index}]"))
    else:
        flat[prefix or "non_field_errors"] = _messages(detail)
    return flat


def _validation_message(fields: Mapping[str, list[str]]) -> str:
    if len(fields) == 1:
        ((name, messages),) = fields.items()
        return f"{name}: {messages[0]}" if name != "non_field_errors" else messages[0]
    return f"Invalid input in {len(fields)} fields: {', '.join(sorted(fields))}."


def _from_django_validation(exc: DjangoValidationError) -> tuple[str, dict[str, list[str]]]:
    if hasattr(exc, "error_dict"):
        fields = {name: [str(m) for m in messages] for name, messages in exc.message_dict.items()}
        fields = {("non_field_errors" if k == "__all__" else k): v for k, v in fields.items()}
    else:
        fields = {"non_field_errors": [str(m) for m in exc.messages]}
    return _validation_message(fields), fields


def _response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status=status, headers=dict(headers or {}))


def api_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    """Render any exception as the error envelope. Never None: nothing escapes as Django's HTML page."""
    set_rollback()
    if pool_exhausted(exc):  # beyond capacity: 503 + Retry-After, not a 500 (services/db.py)
        exc = Overloaded()
    if isinstance(exc, ApplicationError):
        # A 401 names the scheme to use (RFC 9110), as DRF's own 401s do.
        headers = {"WWW-Authenticate": "Token"} if exc.status == 401 else {}
        retry_after = getattr(exc, "retry_after", None)  # a 429 says when to come back (a login lockout)
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        headers.update(exc.headers)
        return _response(exc.status, error_body(exc.code, exc.message, exc.fields), headers)
    if isinstance(exc, drf.ValidationError):
        fields = flatten_fields(exc.detail)
        return _response(400, error_body("invalid", _validation_message(fields), fields))
    if isinstance(exc, DjangoValidationError):
        message, fields = _from_django_validation(exc)
        return _response(400, error_body("invalid", message, fields))
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        # Django raises these while reading the body; a client error, not a crash.
        return _response(400, error_body("request_too_large", "The request body is too large."))
    if isinstance(exc, Http404):
        return _response(404, error_body("not_found", "Not found."))
    if isinstance(exc, DjangoPermissionDenied):
        return _response(
            403, error_body("permission_denied", "You do not have permission to perform this action.")
        )
    if isinstance(exc, SuspiciousOperation):
        return _response(400, error_body("bad_request", "Bad request."))
    if isinstance(exc, drf.APIException):
        headers: dict[str, str] = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))  # type: ignore[attr-defined]
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else str(exc.default_detail)
        code = exc.default_code if not isinstance(detail, str) else getattr(detail, "code", exc.default_code)
        return _response(exc.status_code, error_body(str(code), message), headers)
    view = context.get("view")
    logger.exception("unhandled error in %s", type(view).__name__ if view is not None else "API")
    return _response(500, error_body("server_error", "Internal server error."))


# -------------------------------------------------------------------------------- Django level
def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def json_page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def json_server_error(request: HttpRequest) -> HttpResponse:
    # Called while Django handles the exception, so sys.exc_info() is the error: pool exhaustion outside a
    # DRF view (a middleware's query) is a 503 too.
    if pool_exhausted(sys.exc_info()[1]):
        overloaded = Overloaded()
        response: HttpResponse
        if _is_api(request):
            response = JsonResponse(error_body(overloaded.code, overloaded.message), status=overloaded.status)
        else:
            response = HttpResponse(overloaded.message, status=overloaded.status, content_type="text/plain")
        response["Retry-After"] = str(overloaded.retry_after)
        return response
    if _is_api(request):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return defaults.server_error(request)


def json_bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("bad_request", "Bad request."), status=400)
    return defaults.bad_request(request, exception)


def json_permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("permission_denied", "You do not have permission to perform this action."), status=403
        )
    return defaults.permission_denied(request, exception)
