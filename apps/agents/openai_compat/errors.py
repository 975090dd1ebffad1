"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}` with the status OpenAI would use.

OpenAI clients (the official SDKs, LangChain, curl scripts) pick the exception class from the HTTP status and
show `error.message`; `type` and `code` are what programs branch on, so they follow OpenAI's own values
where one exists (`invalid_request_error`, `model_not_found`, `invalid_api_key`, `rate_limit_exceeded`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.http import JsonResponse

from apps.agents.engine.context import AgentResult
from apps.agents.errors import ApplicationError

#: The `type` OpenAI uses for each status (anything else 4xx: invalid_request_error; 5xx: server_error).
ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "server_error",
    504: "upstream_error",
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape. Raised anywhere below a view of this package."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,  # the name OpenAI gives the field
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(message, status=400, param=param, code=code)


def model_not_found(model: object) -> OpenAIError:
    shown = model if isinstance(model, str) and len(model) <= 200 else "(invalid)"
    return OpenAIError(
        f"The model `{shown}` does not exist or you do not have access to it.",
        status=404,
        param="model",
        code="model_not_found",
    )


def from_application_error(exc: ApplicationError, *, param: str | None = None) -> OpenAIError:
    """An engine refusal (bad input 400, agent inactive 409, ...) in OpenAI's shape; `param` names the part of
    the client's request at fault (the engine names its own fields, e.g. "input_data.task")."""
    if exc.code == "budget_exceeded":
        return insufficient_quota(exc.message, exc.headers.get("Retry-After"))
    return OpenAIError(exc.message, status=exc.status, code=exc.code, param=param)


def insufficient_quota(message: str, retry_after: object = None) -> OpenAIError:
    """A budget refusal as OpenAI words an exhausted quota: 429, type and code `insufficient_quota`. The
    OpenAI SDKs do not retry it on their own unless told to; Retry-After says when the budget resets."""
    headers = {"x-should-retry": "false"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return OpenAIError(
        message, status=429, code="insufficient_quota", type="insufficient_quota", headers=headers
    )


def run_failure(result: AgentResult | None, execution_id: str) -> OpenAIError:
    """A run that ended without an answer: 504 when it timed out, 502 otherwise (every platform failed after
    retries and fallbacks, no platform, invalid output, cancelled meanwhile); `code` says which.

    `x-should-retry: false` tells the OpenAI SDKs not to re-send it: the engine has already retried and fallen
    back, and a re-sent request would be a new, paid run.
    """
    error = result.error if result is not None else None
    code = error.code if error is not None else "provider_error"
    message = error.message if error is not None else "the run ended without an answer"
    if code == "budget_exceeded" and result is not None:
        budget = (result.metadata or {}).get("budget") or {}
        refusal = insufficient_quota(message, budget.get("retry_after"))
        refusal.headers["X-Execution-Id"] = execution_id
        return refusal
    return OpenAIError(
        f"The agent run failed: {message}",
        status=504 if code == "timeout" else 502,
        code=code,
        headers={"x-should-retry": "false", "X-Execution-Id": execution_id},
    )


def overloaded() -> OpenAIError:
    """No database connection came free in time (apps/agents/services/db.py): 503 with Retry-After, which
    the OpenAI SDKs honour when they retry."""
    from apps.agents.services.db import Overloaded

    exc = Overloaded()
    return OpenAIError(
        exc.message, status=exc.status, code=exc.code, headers={"Retry-After": str(exc.retry_after)}
    )
