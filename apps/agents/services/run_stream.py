"""The run stream of an execution: where every client's events come from.

    request -> row (ExecutionEngine.create_execution) -> start_run(): one task runs the engine, records the
    outcome (execution_records.record_outcome) and only then queues the terminal event -> RunStream -> renderers

Renderers read a RunStream (apps/agents/engine/run_stream.py) and know nothing of tasks or cancellation:
native SSE (api/sse.py), OpenAI chunks (openai_compat/streaming.py), the terminal (run_agent), the events bus
publisher (`relay`, used by services/background.py). A reader that did not start the run gets a stream of
the same shape: `replay_from_row` (an Idempotency-Key replay: the first request's outcome, from its row) and
`follow` (the events a run published on the bus, ending with the row's outcome).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

from apps.agents.engine import AgentResult, BaseAgent, RunState
from apps.agents.engine.context import current_execution_id
from apps.agents.engine.events import ExecutionCreated, StreamEvent
from apps.agents.engine.run_stream import RunStream
from apps.agents.models import AgentExecution
from apps.agents.models import ExecutionStatus as Status
from apps.agents.services import run_watcher
from apps.agents.services.budgets import BudgetGuard
from apps.agents.services.execution_prepare import PreparedRun
from apps.agents.services.execution_records import record_outcome, shielded, terminal_event
from apps.agents.services.state_manager import StateManager

logger = logging.getLogger(__name__)

Publish = Callable[[int, StreamEvent], Awaitable[None]]


def start_run(
    *,
    agent: BaseAgent,
    prepared: PreparedRun,
    execution: AgentExecution,
    state: StateManager,
    streamed: bool,
) -> RunStream:
    """Run `agent` for the (already running) row `execution`. Its stream carries ExecutionCreated, the run's
    events (with `streamed`; a synchronous run has none), then the terminal event of the recorded outcome."""
    execution_id = str(execution.pk)
    prepared.context.execution_id = execution_id
    # The run's task gets its own context, so every log line it writes carries the execution id.
    context = contextvars.copy_context()
    context.run(current_execution_id.set, execution_id)

    async def source(stream: RunStream) -> AgentResult:
        return await _run(stream, agent, prepared, execution, state, streamed)

    stream = RunStream.start(source, context=context)
    stream.push(ExecutionCreated(execution_id, prepared.agent.agent_id))
    return stream


async def _run(
    stream: RunStream,
    agent: BaseAgent,
    prepared: PreparedRun,
    execution: AgentExecution,
    state: StateManager,
    streamed: bool,
) -> AgentResult:
    run = RunState()
    # Heartbeat and cancel requests from other processes: one watcher for all the runs of this process.
    forget = run_watcher.watch(str(execution.pk), lambda: stream.cancel("cancelled by request"))
    cancelled: asyncio.CancelledError | None = None
    try:
        result = await agent.run(
            prepared.input_data, prepared.context, run=run, emit=stream.emit if streamed else None
        )
        target = Status.COMPLETED if result.success else Status.FAILED
    except asyncio.CancelledError as exc:
        # A cancel request (stream.cancel_reason) or the reader went away (RunStream.aclose): the engine has
        # closed the upstream request; record what the run got, then let the cancellation go on.
        cancelled = exc
        reason = stream.cancel_reason or "cancelled: the caller went away"
        result, target = run.partial_result("cancelled_by_user", reason), Status.CANCELLED
    except Exception as error:
        logger.error("engine error", exc_info=error, extra={"execution_id": str(execution.pk)})
        # The exception's text stays in the log above: it can hold paths, SQL, anything.
        result = run.partial_result(
            "provider_error", f"internal error ({type(error).__name__}; details are in the server log)"
        )
        target = Status.FAILED
    finally:
        forget()
    # The guard is always the services' BudgetGuard: ExecutionEngine._start sets it.
    guard: BudgetGuard | None = getattr(agent, "spend_guard", None)
    result = await record_end(state, prepared, execution, guard, result, target, run)
    stream.outcome = result
    stream.push(terminal_event(result))  # the recorded outcome, not necessarily this run's own
    if cancelled is not None:
        raise cancelled
    return result


async def record_end(
    state: StateManager,
    prepared: PreparedRun,
    execution: AgentExecution,
    guard: BudgetGuard | None,
    result: AgentResult,
    target: str,
    run: RunState,
) -> AgentResult:
    """The run is over: its outcome recorded (what the row now says is returned). Its last settlement and its
    concurrency slot are written with the outcome, in one transaction. Not a conversation's: its completion
    is a transaction that a lost transition rolls back whole, so they are written first, on their own."""
    if guard is not None and prepared.conversation is not None:
        await shielded(guard.close())
    along = guard.closing() if guard is not None else None
    return await shielded(record_outcome(state, prepared, execution, result, target, run, along=along))


def replay_from_row(execution: AgentExecution) -> RunStream:
    """The stream of an earlier request's run (an Idempotency-Key replay): ExecutionCreated, then its
    recorded outcome once it has one (no deltas: they were the first request's)."""
    from apps.agents.services.idempotency import replayed_result

    async def source(stream: RunStream) -> AgentResult:
        stream.push(ExecutionCreated(str(execution.pk), execution.agent_slug))
        result = await replayed_result(execution)
        status = (
            await AgentExecution.objects.filter(pk=execution.pk).values_list("status", flat=True).afirst()
        )
        stream.outcome = result
        stream.push(terminal_event(result, status or Status.FAILED))
        return result

    return RunStream.start(source)


def follow(execution_id: str, after_seq: int) -> RunStream:
    """What a run published on the events bus after `after_seq`, then its outcome (from the row if the bus
    lost it). Closing this stream stops reading, never the run (POST cancel does that)."""
    from apps.agents.services.events_bus import subscribe

    return RunStream.over(subscribe(execution_id, after_seq))


async def relay(stream: RunStream, publish: Publish) -> None:
    """Hand every event of `stream` to `publish(seq, event)` (the events bus). A publish that fails is
    logged and skipped: the row is the record, and a lost event must not stop the run."""
    while (item := await stream.read()) is not None:
        try:
            await publish(item.seq, item.event)  # type: ignore[union-attr]
        except Exception:
            logger.exception("publishing event %d failed", item.seq)  # type: ignore[union-attr]


__all__ = ["RunStream", "follow", "relay", "replay_from_row", "start_run"]
