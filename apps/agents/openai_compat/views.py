"""`/v1/chat/completions`, `/v1/models`: the OpenAI-compatible facade over agent runs.

Plain async Django views rather than DRF ones: a run is awaited on the event loop (an SSE stream can last
minutes and must notice the client leaving), and the only blocking work, authentication + rate limits + the
agent lookup, is one `sync_to_async` hop (auth.py). Every answer, including every error, is in OpenAI's
shape (errors.py). Each call is an ordinary AgentExecution created and run by the execution engine.
"""

from __future__ import annotations

import copy
import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.agents.api.parsers import JSONTooDeep, loads_bounded
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent
from apps.agents.openai_compat.auth import Admission, admit
from apps.agents.openai_compat.checks import check_request_fits_agent
from apps.agents.openai_compat.errors import (
    OpenAIError,
    from_application_error,
    invalid,
    model_not_found,
    overloaded,
    run_failure,
)
from apps.agents.openai_compat.responses import chat_completion, model_list, model_object
from apps.agents.openai_compat.schemas import ChatRequest, parse_chat_request
from apps.agents.openai_compat.streaming import stream_chat
from apps.agents.services.db import pool_exhausted

logger = logging.getLogger(__name__)

SERVER_ERROR = OpenAIError("The server had an error while processing your request.", status=500)


def _engine() -> Any:
    # Imported at call time, as the API does: the URLconf stays importable without the platform SDKs.
    from apps.agents.services import execution_engine

    return execution_engine


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponseBase:
    return OpenAIError(
        f"Method {request.method} is not allowed on {request.path}; use {allowed}.",
        status=405,
        code="method_not_allowed",
        headers={"Allow": allowed},
    ).response()


def _read_json(request: HttpRequest) -> Any:
    try:
        return loads_bounded(request.body)
    except RequestDataTooBig:
        raise invalid("The request body is too large.", code="request_too_large") from None
    except JSONTooDeep as exc:
        raise invalid(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    except ValueError:  # also UnicodeDecodeError
        raise invalid(
            "We could not parse the JSON body of your request: send a JSON object with "
            "Content-Type: application/json.",
            code="invalid_json",
        ) from None


async def admit_run(request: HttpRequest) -> tuple[Any, Admission]:
    """The JSON body of a request that runs an agent, and its admission. 401 and 429 come before any
    complaint about the body, as with OpenAI."""
    try:
        body, body_error = _read_json(request), None
    except OpenAIError as exc:
        body, body_error = None, exc
    admission = await admit(
        request, model=body.get("model") if isinstance(body, dict) else None, execute=True
    )
    if body_error is not None:
        raise body_error
    return body, admission


def agent_for_request(agent: Agent, chat: ChatRequest) -> Agent:
    """The agent as this request runs it: the row itself, or an unsaved copy carrying the request's
    temperature / max_tokens and its system messages appended to the agent's prompt. The copy keeps the
    row's primary key, so the execution still belongs to the agent; nothing ever saves it."""
    if chat.temperature is None and chat.max_tokens is None and not chat.system:
        return agent
    view = copy.copy(agent)
    if chat.temperature is not None:
        view.temperature = chat.temperature
    if chat.max_tokens is not None:
        view.max_tokens = chat.max_tokens
    if chat.system:
        view.system_prompt = f"{agent.system_prompt}\n\n{chat.system}" if agent.system_prompt else chat.system
    return view


def with_request_id(response: HttpResponseBase) -> HttpResponseBase:
    """`x-request-id` on every /v1 response (the SDKs expose it as `_request_id`): the execution id when the
    request made a run, so that a client's log line leads to /api/v1/executions/<id>/; otherwise a fresh id."""
    if not response.has_header("x-request-id"):
        execution_id = response.get("X-Execution-Id")
        response["x-request-id"] = execution_id or f"req_{uuid.uuid4().hex}"
    return response


def _openai_errors(view: Any) -> Any:
    """Every error of `view` in OpenAI's shape; an unexpected one is logged and answered as a bare 500."""

    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            response = await view(request, *args, **kwargs)
        except OpenAIError as exc:
            response = exc.response()
        except Exception as exc:
            if pool_exhausted(exc):  # beyond capacity: 503 + Retry-After, never a 500
                return with_request_id(overloaded().response())
            logger.exception("unhandled error in %s", view.__name__)
            response = SERVER_ERROR.response()
        return with_request_id(response)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return csrf_exempt(wrapper)  # token auth only (no cookies): nothing for CSRF to protect


@_openai_errors
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    body, admission = await admit_run(request)
    chat = parse_chat_request(
        body, max_messages=2 * int(settings.MAX_HISTORY_MESSAGES), max_chars=int(settings.MAX_TASK_CHARS)
    )
    if admission.agent is None:
        raise model_not_found(chat.model)
    check_request_fits_agent(admission.agent, chat)
    agent = agent_for_request(admission.agent, chat)
    engine = _engine()
    run = {"options": chat.options()}
    try:
        if chat.stream:
            stream = await engine.open_stream(agent, chat.input_data(), admission.user, chat.context(), **run)
            return await stream_chat(stream, chat)
        result = await engine.execute_agent(agent, chat.input_data(), admission.user, chat.context(), **run)
    except ApplicationError as exc:
        field = next(iter(exc.fields), None) if exc.fields else None
        raise from_application_error(exc, param=chat.param_for(field) if field else None) from None
    if not result.success:
        raise run_failure(result, str(result.execution_id))
    response = JsonResponse(chat_completion(result, model=chat.model))
    response["X-Execution-Id"] = str(result.execution_id)
    return response


@_openai_errors
async def models(request: HttpRequest) -> HttpResponseBase:
    """The agents the caller may use as `model`: their own and shared ones (staff: all), active only."""
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    admission = await admit(request, list_models=True)
    return JsonResponse(model_list(admission.agents or [], user=admission.user))


@_openai_errors
async def model_detail(request: HttpRequest, model: str) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    admission = await admit(request, model=model)
    if admission.agent is None or not admission.agent.is_active:
        raise model_not_found(model)
    return JsonResponse(model_object(admission.agent, user=admission.user))


@_openai_errors
async def unknown_url(request: HttpRequest, path: str = "") -> HttpResponseBase:
    raise OpenAIError(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")
