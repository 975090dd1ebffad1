"""`POST /v1/responses`, `GET /v1/responses/{id}`: the Responses API over agent runs, one AgentExecution per
call like the rest of /v1. The request is validated (responses_api.py), translated into the equivalent
chat request and mapped by schemas.py, so both APIs ask the same of a run; the answer is rendered by
responses_render.py (or streamed by responses_stream.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from apps.agents.errors import ApplicationError
from apps.agents.openai_compat import response_store
from apps.agents.openai_compat.auth import admit
from apps.agents.openai_compat.checks import check_request_fits_agent
from apps.agents.openai_compat.errors import OpenAIError, from_application_error, model_not_found, run_failure
from apps.agents.openai_compat.responses_api import ResponsesBody, chat_param, to_chat_body
from apps.agents.openai_compat.responses_render import ResponseEcho, response_object
from apps.agents.openai_compat.responses_stream import stream_response
from apps.agents.openai_compat.schemas import ChatRequest, parse_chat_request
from apps.agents.openai_compat.views import (
    _engine,
    _method_not_allowed,
    _openai_errors,
    admit_run,
    agent_for_request,
)
from apps.agents.openai_compat.wire import validate_body


def _echo(body: ResponsesBody) -> ResponseEcho:
    return ResponseEcho(
        model=body.model,
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        store=body.store is not False,
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        tool_choice=body.tool_choice.model_dump()
        if hasattr(body.tool_choice, "model_dump")
        else (body.tool_choice or "auto"),  # type: ignore[union-attr]
        text=body.text.model_dump(by_alias=True, exclude_none=True) if body.text is not None else None,
        temperature=body.temperature,
        top_p=body.top_p,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )


#: What GET /v1/responses/{id} needs to render the response again (its model is the execution's agent).
_RECORDED_ECHO = ("store", "instructions", "previous_response_id", "tools", "tool_choice", "text", "metadata")


def _echo_record(echo: ResponseEcho) -> dict[str, Any]:
    """The recorded part of the echo, kept in the execution's context (JSON: metadata as a plain dict)."""
    record = {name: getattr(echo, name) for name in _RECORDED_ECHO}
    record["metadata"] = dict(echo.metadata)
    return record


def _parse(body: ResponsesBody, prior_calls: dict[str, str]) -> ChatRequest:
    try:
        return parse_chat_request(
            to_chat_body(body),
            max_messages=2 * int(settings.MAX_HISTORY_MESSAGES),
            max_chars=int(settings.MAX_TASK_CHARS),
            prior_calls=prior_calls,
            continuing=True,
        )
    except OpenAIError as exc:
        exc.param = chat_param(exc.param, body)
        raise


@_openai_errors
async def responses(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    raw, admission = await admit_run(request)
    body: ResponsesBody = validate_body(ResponsesBody, raw)
    if admission.agent is None:
        raise model_not_found(body.model)
    echo = _echo(body)
    previous = None
    if body.previous_response_id is not None:
        previous = await response_store.previous_conversation(admission.user, body.previous_response_id)
    chat = _parse(body, previous.calls if previous is not None else {})
    check_request_fits_agent(admission.agent, chat)
    agent = agent_for_request(admission.agent, chat)
    context = chat.context()
    context.setdefault("metadata", {}).setdefault("openai_compat", {})["responses"] = _echo_record(echo)
    created_conversation = None
    if previous is not None:
        context["conversation_id"] = previous.conversation_id
    elif echo.store:
        created_conversation = await response_store.new_conversation(admission.user, admission.agent)
        context["conversation_id"] = created_conversation
    engine = _engine()
    run = {"options": chat.options()}
    try:
        if body.stream:
            stream = await engine.open_stream(agent, chat.input_data(), admission.user, context, **run)
            return await stream_response(stream, echo)
        result = await engine.execute_agent(agent, chat.input_data(), admission.user, context, **run)
    except ApplicationError as exc:
        if created_conversation is not None:
            await response_store.forget_conversation(created_conversation)
        # 409: the conversation is busy with another response; 400: the engine refused the input.
        param = {400: "input", 409: "previous_response_id" if previous is not None else None}.get(exc.status)
        raise from_application_error(exc, param=param) from None
    if not result.success:
        raise run_failure(result, str(result.execution_id))
    response = JsonResponse(
        response_object(result, execution_id=result.execution_id, echo=echo).model_dump(
            mode="json", exclude_unset=True
        )
    )
    response["X-Execution-Id"] = str(result.execution_id)
    return response


@_openai_errors
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    admission = await admit(request)
    execution = await response_store.get_stored_execution(admission.user, response_id)
    if execution is None:
        raise response_store.not_found(response_id)
    from apps.agents.services.execution_records import result_from_row

    result = result_from_row(execution)
    record = execution.context["metadata"]["openai_compat"]["responses"]
    echo = ResponseEcho(model=execution.agent_slug or "", **record)
    status = None if execution.status in ("completed", "failed", "cancelled") else "in_progress"
    if execution.status == "cancelled":
        status = "cancelled"
    rendered = response_object(
        result if status != "in_progress" else None,
        execution_id=execution.pk,
        echo=echo,
        created=execution.created_at.timestamp(),
        status=status,
    )
    response = JsonResponse(rendered.model_dump(mode="json", exclude_unset=True))
    response["X-Execution-Id"] = str(execution.pk)
    return response
