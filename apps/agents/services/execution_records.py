"""Recording a run's outcome (part of the ExecutionEngine service): the final conditional UPDATE through the
StateManager, and for a conversation the new messages and summary in the same transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.agents import metrics
from apps.agents.engine import AgentResult, RunState
from apps.agents.engine.context import AgentError
from apps.agents.engine.events import ExecutionCancelled, ExecutionCompleted, ExecutionFailed, StreamEvent
from apps.agents.errors import IllegalTransition
from apps.agents.models import AgentExecution, Conversation, ExecutionStatus, Message
from apps.agents.services.conversation_lock import arelease_conversation, release_conversation
from apps.agents.services.db import Along, db_unit
from apps.agents.services.execution_prepare import PreparedRun
from apps.agents.services.state_manager import StateManager

logger = logging.getLogger(__name__)


async def record_outcome(
    states: StateManager,
    prepared: PreparedRun,
    execution: AgentExecution,
    result: AgentResult,
    target: str,
    run: RunState,
    *,
    along: Along | None = None,
) -> AgentResult:
    """Move the row to `target` with the result, and return what the row now says: the client is told the
    recorded outcome, never one the record contradicts (ARCHITECTURE.md, security rules). `along`: the run's
    last budget settlement and slot release (BudgetGuard.closing), written in the same transaction, before
    the UPDATE; they commit whatever the UPDATE finds.

    - The write won: `result` with execution_id and the recorded execution_time.
    - A completion lost only to a cancel request (the row is still running, cancel_requested_at is set): the
      run is recorded `cancelled` instead, with what it produced; a cancel request is final.
    - Another process ended the row first (the reaper's worker_lost, a cancel): the row is left as it is and
      its outcome is returned (result_from_row), whatever this run produced.
    """
    result.execution_id = str(execution.pk)
    outcome: dict[str, Any] = {
        "output": result.output,
        "tokens_in": result.input_tokens,
        "tokens_out": result.output_tokens,
        "cost": result.cost,
        "platform": result.platform_used,
        "model": result.model_used,
        "attempts": result.attempts,
        "metadata": result.metadata,
    }
    conversation = prepared.conversation

    async def write(along: Along | None) -> None:
        if target == ExecutionStatus.COMPLETED and conversation is not None:
            assert along is None  # written before, on its own (run_stream._run)
            await db_unit(_complete_conversation_run)(states, prepared, execution, result, outcome, run)
        elif target == ExecutionStatus.COMPLETED:
            await states.acomplete_execution(execution, along=along, **outcome)
        elif target == ExecutionStatus.FAILED:
            error = result.error or AgentError("provider_error", "failed")
            await states.afail_execution(
                execution, code=error.code, message=error.message, along=along, **outcome
            )
        else:
            message = result.error.message if result.error else "cancelled"
            await states.acancel_execution(execution, message=message, along=along, **outcome)

    lost = False
    try:
        try:
            await write(along)
        except IllegalTransition:
            raise
        except Exception:
            if along is None:
                raise
            # The run's own outcome must not be lost to its settlement: written alone, and the reaper
            # releases the reservations (settled at their worst case), as when a settlement fails on its own.
            logger.exception(
                "settling the run's reservations failed", extra={"execution_id": str(execution.pk)}
            )
            await write(None)
    except IllegalTransition as exc:
        lost = True
        if target == ExecutionStatus.COMPLETED and exc.current == ExecutionStatus.RUNNING:
            try:
                await states.acancel_execution(execution, message="cancelled by request", **outcome)
                lost = False
                target = ExecutionStatus.CANCELLED
                result.success = False
                result.error = AgentError("cancelled_by_user", "cancelled by request")
            except IllegalTransition:
                pass  # ended meanwhile by someone else: report that row
        if lost:
            logger.warning(
                "%s; keeping its recorded outcome", exc.message, extra={"execution_id": str(execution.pk)}
            )
    if conversation is not None and (lost or target != ExecutionStatus.COMPLETED):
        # Free the conversation for the next run (a completed run does this inside its transaction).
        await arelease_conversation(conversation.pk, execution.pk)
    metrics.record_execution(execution)  # counts only if this write made the row terminal
    if lost:
        row = await states.aget_execution(execution.pk)
        if row is not None:
            return result_from_row(row)
    if execution.execution_time is not None:
        result.execution_time = execution.execution_time
    return result


def _complete_conversation_run(
    states: StateManager,
    prepared: PreparedRun,
    execution: AgentExecution,
    result: AgentResult,
    outcome: dict[str, Any],
    run: RunState,
) -> None:
    """One transaction: complete the row, append this run's messages, store the new summary."""
    conversation = prepared.conversation
    assert conversation is not None
    with transaction.atomic():
        states.complete_execution(execution, **outcome)
        # Locking the conversation row serialises appends, so positions stay unique and gap-free.
        locked = Conversation.objects.select_for_update().filter(pk=conversation.pk)
        current = locked.values("summary_upto", "title").first()
        if current is None:  # deleted meanwhile: the execution is recorded, there is nowhere to append
            return
        last = Message.objects.filter(conversation_id=conversation.pk).aggregate(m=Max("position"))["m"] or 0
        transcript = run.transcript
        Message.objects.bulk_create(
            Message(
                conversation_id=conversation.pk,
                position=last + index,
                role=message.role,
                content=message.content,
                tool_calls=[
                    {"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in message.tool_calls
                ],
                tool_call_id=message.tool_call_id or "",
                tokens=result.output_tokens if index == len(transcript) else 0,
                execution_id=execution.pk,
            )
            for index, message in enumerate(transcript, start=1)
        )
        updates: dict[str, Any] = {"updated_at": timezone.now()}
        summary = result.metadata.get("summary")
        if summary and prepared.positions:
            upto = prepared.positions[summary["upto"] - 1]
            if upto > current["summary_upto"]:  # never move the summary back behind a newer one
                updates.update(summary=summary["text"], summary_upto=upto)
        if not current["title"] and transcript:
            updates["title"] = transcript[0].content[:80]
        locked.update(**updates)
        release_conversation(conversation.pk, execution.pk)


async def shielded(write: Awaitable[AgentResult]) -> AgentResult:
    """Finish a final write even if the task awaiting it is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def result_from_row(execution: AgentExecution) -> AgentResult:
    """The AgentResult a recorded execution stands for: how a response is rebuilt later (an idempotent replay,
    a late reader of its events, a row that was not, or is no longer, ours to run)."""
    error = None
    if execution.status != ExecutionStatus.COMPLETED:
        code = execution.error_code or "provider_error"
        error = AgentError(code, execution.error_message or f"execution is {execution.status}")  # type: ignore[arg-type]
    return AgentResult(
        success=execution.status == ExecutionStatus.COMPLETED,
        output=execution.output,
        input_tokens=execution.input_tokens,
        output_tokens=execution.output_tokens,
        cost=execution.cost,
        execution_time=execution.execution_time or 0.0,
        platform_used=execution.platform_used or None,
        model_used=execution.model_used or None,
        error=error,
        metadata=dict(execution.metadata or {}),
        execution_id=str(execution.pk),
    )


def terminal_event(result: AgentResult, status: str | None = None) -> StreamEvent:
    """The terminal event of a run that ended in `status` with `result` (as recorded). Without `status`,
    the one `result` stands for: record_outcome's answer is what the row says, which may not be what this
    run had (the reaper or a cancel may have ended the row first)."""
    if status is None:
        if result.success:
            status = ExecutionStatus.COMPLETED
        elif result.error is not None and result.error.code == "cancelled_by_user":
            status = ExecutionStatus.CANCELLED
        else:
            status = ExecutionStatus.FAILED
    if status == ExecutionStatus.COMPLETED:
        return ExecutionCompleted(result)
    if status == ExecutionStatus.CANCELLED:
        return ExecutionCancelled(result)
    return ExecutionFailed(result.error or AgentError("provider_error", f"execution is {status}"), result)


def terminal_event_from_row(execution: AgentExecution) -> StreamEvent:
    """The terminal event a finished row stands for."""
    return terminal_event(result_from_row(execution), execution.status)


def status_body(execution: AgentExecution) -> dict[str, Any]:
    """get_execution_status(): the row's state, outcome and attempts as JSON-ready values."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    error = (
        {"code": execution.error_code, "message": execution.error_message} if execution.error_code else None
    )
    return {
        "execution_id": str(execution.pk),
        "agent_id": execution.agent_slug,
        "status": execution.status,
        "mode": execution.mode,
        "success": execution.status == ExecutionStatus.COMPLETED,
        "output": execution.output,
        "error": error,
        "tokens_used": execution.tokens_used,
        "input_tokens": execution.input_tokens,
        "output_tokens": execution.output_tokens,
        "cost": float(execution.cost),
        "execution_time": execution.execution_time,
        "platform_used": execution.platform_used or None,
        "model_used": execution.model_used or None,
        "attempts": execution.attempts,
        "conversation_id": str(execution.conversation_id) if execution.conversation_id else None,
        "cancel_requested": execution.cancel_requested_at is not None,
        "created_at": iso(execution.created_at),
        "started_at": iso(execution.started_at),
        "finished_at": iso(execution.finished_at),
        "heartbeat_at": iso(execution.heartbeat_at),
    }
