"""Execute and cancel, split in the two halves described in deferred.py.

`build_command` and `admit` run in the DRF view (sync, in a worker thread): everything that can refuse the
request, then the run's row, written in that same thread (one thread hop and one database connection for
the whole admission). `run`, `abandon` and `cancel` are awaited on the event loop and call the execution
engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from django.http import HttpResponseBase
from django.urls import reverse
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from apps.agents.api.serializers import ExecutionAcceptedSerializer
from apps.agents.api.serializers_records import (
    CancelOutputSerializer,
)
from apps.agents.api.sse import event_stream, wants_event_stream
from apps.agents.engine.serialize import result_body
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent, AgentExecution
from apps.agents.services.background import aenqueue_execution, request_cancel
from apps.agents.services.idempotency import clean_key, request_hash
from apps.agents.services.run_stream import follow as follow_run

if TYPE_CHECKING:  # imported at call time (_engine)
    from apps.agents.services.execution_engine import AdmittedRun

Mode = Literal["sync", "stream", "background"]

IDEMPOTENCY_HEADER = "Idempotency-Key"

# HTTP status of a run that ended without success, with the seed's body and `success: false`
# (ARCHITECTURE.md):
# 504 when it timed out, 502 for everything else (provider errors after retries and fallbacks, no platform,
# invalid output, cancelled meanwhile); `error.code` says which. Any other status carries the error envelope.
FAILURE_STATUS = {
    "timeout": status.HTTP_504_GATEWAY_TIMEOUT,
    # A budget refused an attempt (the run lost the race for the budget's last room): nothing was sent.
    "budget_exceeded": status.HTTP_429_TOO_MANY_REQUESTS,
}


@dataclass(frozen=True, slots=True)
class ExecuteCommand:
    agent: Agent
    user: Any
    input_data: dict[str, Any]
    context: dict[str, Any]
    mode: Mode
    idempotency_key: str | None
    request_hash: str


def _request_hash(*, agent: Agent, input_data: dict[str, Any], context: dict[str, Any], mode: Mode) -> str:
    """What makes two requests "the same" for an Idempotency-Key: same agent, input and way of running."""
    return request_hash({"agent": str(agent.pk), "input_data": input_data, "context": context, "mode": mode})


def build_command(*, request: Request, agent: Agent, validated: dict[str, Any]) -> ExecuteCommand:
    """The run, as the engine takes it. Whether the agent is active and the conversation is the user's is
    checked by the engine itself (apps/agents/services/execution_prepare.py), with the same 409/404."""
    context = {key: value for key, value in (validated.get("context") or {}).items() if value is not None}
    if "conversation_id" in context:
        context["conversation_id"] = str(context["conversation_id"])
    mode: Mode = "background" if validated["background"] else "stream" if validated["stream"] else "sync"
    if mode == "sync" and wants_event_stream(request):
        mode = "stream"
    input_data = dict(validated["input_data"])
    return ExecuteCommand(
        agent=agent,
        user=request.user,
        input_data=input_data,
        context=context,
        mode=mode,
        # A bad key is refused here, before any work (the admission applies the same rule).
        idempotency_key=clean_key(request.headers.get(IDEMPOTENCY_HEADER)),
        request_hash=_request_hash(agent=agent, input_data=input_data, context=context, mode=mode),
    )


def _engine() -> Any:
    # Imported at call time: the API module graph stays importable (URLconf, schema) without the SDKs loaded.
    from apps.agents.services.execution_engine import execution_engine

    return execution_engine


def _engine_kwargs(command: ExecuteCommand) -> dict[str, Any]:
    # Every field but the mode, which picks the engine's entry point instead of being passed to it.
    return {f.name: getattr(command, f.name) for f in fields(command) if f.name != "mode"}


def execution_links(request: Request, execution_id: Any) -> dict[str, str]:
    def url(name: str) -> str:
        return request.build_absolute_uri(reverse(name, args=[str(execution_id)]))

    return {
        "poll": url("execution-detail"),
        "cancel": url("execution-cancel"),
        "events": url("execution-events"),
    }


def admit(command: ExecuteCommand) -> AdmittedRun:
    """The run's row (ExecutionEngine.admit), written in the calling DRF half's thread."""
    return _engine().admit(mode=command.mode, **_engine_kwargs(command))


async def abandon(admitted: AdmittedRun) -> None:
    """The client went away before `run` started (deferred.py): the row is cancelled, not left running."""
    await _engine().abandon(admitted)


async def run(request: Request, command: ExecuteCommand, admitted: AdmittedRun) -> HttpResponseBase:
    engine = _engine()
    if command.mode == "stream":
        return event_stream(await engine.stream_admitted(admitted))
    if command.mode == "background":
        return await _run_in_background(request, admitted.execution)
    return await run_sync(admitted)


async def run_sync(admitted: AdmittedRun) -> Response:
    """A synchronous run and its answer: the seed's body, 200 or the failure's status (FAILURE_STATUS)."""
    result = await _engine().run_admitted(admitted)
    # result_body is already the documented shape (AgentExecutionOutputSerializer, the schema; the SSE
    # terminal event carries the same dict), and a test holds the two equal: rendering it through DRF's
    # fields again cost about half a millisecond of CPU per request.
    body = result_body(result)
    if result.success:
        return Response(body, status=status.HTTP_200_OK)
    code = result.error.code if result.error is not None else ""
    return Response(
        body, status=FAILURE_STATUS.get(code, status.HTTP_502_BAD_GATEWAY), headers=retry_after_header(result)
    )


def retry_after_header(result: Any) -> dict[str, str]:
    """Retry-After of a run a budget refused (the budget's reset, or a few seconds for room held in flight)."""
    budget = (result.metadata or {}).get("budget") or {}
    retry_after = (
        budget.get("retry_after") if result.error and result.error.code == "budget_exceeded" else None
    )
    return {"Retry-After": str(retry_after)} if retry_after is not None else {}


async def _run_in_background(request: Request, execution: AgentExecution) -> Response:
    await aenqueue_execution(execution)
    body = {
        "execution_id": execution.pk,
        "status": execution.status,
        "links": execution_links(request, execution.pk),
    }
    return Response(ExecutionAcceptedSerializer(body).data, status=status.HTTP_202_ACCEPTED)


async def cancel(execution: AgentExecution) -> Response:
    # The background service also tells the worker holding the run (Redis notice) and the event readers.
    requested = await request_cancel(execution.pk)
    current = await AgentExecution.objects.filter(pk=execution.pk).values_list("status", flat=True).afirst()
    if not requested and current not in ("pending", "running", "cancelled"):
        raise ApplicationError(
            f"Execution is already {current}.", code="not_cancellable", status=status.HTTP_409_CONFLICT
        )
    body = {"execution_id": execution.pk, "status": current, "cancel_requested": bool(requested)}
    return Response(CancelOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


async def follow(execution: AgentExecution, after_seq: int) -> HttpResponseBase:
    """SSE of an execution's published events after `after_seq` (Last-Event-ID), ending with its outcome."""
    return event_stream(follow_run(str(execution.pk), after_seq))
