"""ExecutionEngine: runs an Agent row on the engine and records the run (seed: execution_engine.py).

    prepare (validate the input, load the conversation; a 4xx writes nothing)   -> execution_prepare.py
      -> create the row (sync / stream: inserted already `running`; background: `pending`)
      -> the engine runs in a child task, a watcher task beside it (heartbeat, cancel requests)
      -> one final conditional UPDATE through the StateManager (completed / failed / cancelled), also when
         the caller goes away (CancelledError, a closed stream); shielded  -> execution_records.py

A synchronous run costs two writes (the INSERT and the final UPDATE, attempts included); a conversation run
adds its messages and summary inside the final write's transaction. ORM work runs through Django's async
methods, or one sync_to_async per unit of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.agents.engine import AGENT_CLASSES, AgentConfig, AgentResult, BaseAgent, RunState, TaskAgent
from apps.agents.engine.context import current_execution_id
from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.events import (
    ExecutionCreated,
    StreamEvent,
)
from apps.agents.engine.request_options import RequestOptions
from apps.agents.engine.retry import RetryPolicy
from apps.agents.engine.tools import ToolRegistry
from apps.agents.errors import ApplicationError, IllegalTransition
from apps.agents.models import TERMINAL_STATUSES, Agent, AgentExecution, Conversation, ExecutionMode
from apps.agents.models import ExecutionStatus as Status
from apps.agents.services.background import anotify_cancel
from apps.agents.services.budgets import guard_for, precheck
from apps.agents.services.execution_prepare import PreparedRun, agent_config, prepare_run
from apps.agents.services.execution_records import (
    record_outcome,
    result_from_row,
    shielded,
    status_body,
    terminal_event,
)
from apps.agents.services.idempotency import aadmit_execution, replayed_events, replayed_result
from apps.agents.services.state_manager import StateManager, state_manager
from apps.agents.services.tools import tools_for_run
from apps.platforms import registry as platform_registry

logger = logging.getLogger(__name__)

Publish = Callable[[int, StreamEvent], Awaitable[None]]
_END = object()

__all__ = ["ExecutionEngine", "PreparedRun", "agent_config", "execution_engine"]


class _Control:
    """Why the run was stopped from outside (None: it was not)."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None


class ExecutionEngine:
    def __init__(
        self, *, state: StateManager = state_manager, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    ) -> None:
        self.state = state
        #: The retry loop's sleep (tests replace it to assert Retry-After without waiting).
        self.sleep = sleep
        # Cooldowns belong to a registry: the process-wide registry gets process-wide cooldowns, and a
        # registry that a test installs with set_registry() starts with none.
        self._cooldowns: weakref.WeakKeyDictionary[Any, Cooldowns] = weakref.WeakKeyDictionary()
        # Runs of this process: execution id -> a thread-safe "stop now", so cancel() needs no poll here.
        self._local: dict[str, Callable[[], None]] = {}

    # ------------------------------------------------------------------ building blocks
    def cooldowns_for(self, registry: Any) -> Cooldowns:
        cooldowns = self._cooldowns.get(registry)
        if cooldowns is None:
            cooldowns = Cooldowns(
                threshold=int(settings.PLATFORM_COOLDOWN_AFTER_FAILURES),
                seconds=float(settings.PLATFORM_COOLDOWN_SECONDS),
            )
            self._cooldowns[registry] = cooldowns
        return cooldowns

    def build_agent(self, config: AgentConfig, *, tools: ToolRegistry | None = None) -> BaseAgent:
        """The engine agent for `config`, over the registry of the moment (so tests can swap it), with
        `tools` (default: the process-wide registry of built-in and project tools)."""
        registry = platform_registry.get_registry()
        policy = RetryPolicy(
            base_delay=float(settings.RETRY_BASE_DELAY), max_delay=float(settings.RETRY_MAX_DELAY)
        )
        agent_class = AGENT_CLASSES.get(config.agent_type, TaskAgent)
        return agent_class(
            config,
            registry,
            cooldowns=self.cooldowns_for(registry),
            sleep=self.sleep,
            retry_policy=policy,
            tools=tools,
        )

    async def prepare(
        self, agent: Agent, input_data: Any, user: Any = None, context: Any = None, **kwargs: Any
    ) -> PreparedRun:
        return await prepare_run(agent, input_data, user, context, **kwargs)

    async def create_execution(
        self,
        prepared: PreparedRun,
        *,
        mode: str,
        running: bool,
        idempotency_key: str | None = None,
        request_hash: str = "",
    ) -> AgentExecution:
        """The one place a row is created: idempotent admission and the conversation claim (409), see
        apps/agents/services/idempotency.py. When the Idempotency-Key names an earlier request, its row comes
        back with `replayed = True`: nothing was created and the caller answers with that row's outcome."""
        # A budget already exhausted (or at its concurrency limit) refuses the request before any row exists.
        precheck(prepared.budgets, prepared.budget_windows)
        admission = await aadmit_execution(
            **prepared.create_kwargs(mode=mode, running=running),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        admission.execution.replayed = not admission.created
        return admission.execution

    # ------------------------------------------------------------------ the contract (TEAM.md)
    async def execute_agent(
        self,
        agent: Agent,
        input_data: Any,
        user: Any = None,
        context: Any = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str = "",
        options: RequestOptions | None = None,
    ) -> AgentResult:
        """Run to the end. Provider failures give success=False and `error` (never raise); bad input raises
        ApplicationError before any row is written."""
        prepared = await self.prepare(agent, input_data, user, context, options=options)
        execution = await self.create_execution(
            prepared,
            mode=ExecutionMode.SYNC,
            running=True,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        if execution.replayed:
            return await replayed_result(execution)
        terminal: Any = None
        async for terminal in self._events(prepared, execution, stream=False):  # noqa: B007 - the last one
            pass
        return terminal.result

    async def execute_streaming(
        self,
        agent: Agent,
        input_data: Any,
        user: Any = None,
        context: Any = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str = "",
        options: RequestOptions | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """ExecutionCreated, then deltas / tool events / fallbacks, then Completed | Failed | Cancelled.

        Bad input raises ApplicationError from the first __anext__(), before any row exists: await the first
        event before committing to a 200. Closing the iterator early (aclose, or cancelling its consumer)
        cancels the run, closes the upstream request and records the row as cancelled with what it got.
        """
        prepared = await self.prepare(agent, input_data, user, context, options=options)
        execution = await self.create_execution(
            prepared,
            mode=ExecutionMode.STREAM,
            running=True,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        if execution.replayed:
            async for event in replayed_events(execution):
                yield event
            return
        async for event in self._events(prepared, execution, stream=True):
            yield event

    async def create_pending(
        self,
        agent: Agent,
        input_data: Any,
        user: Any = None,
        context: Any = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str = "",
    ) -> AgentExecution:
        """A validated `pending` row for a background run (run_execution runs it)."""
        prepared = await self.prepare(agent, input_data, user, context)
        return await self.create_execution(
            prepared,
            mode=ExecutionMode.BACKGROUND,
            running=False,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )

    async def run_execution(self, execution_id: Any, *, publish: Publish | None = None) -> AgentResult:
        """Run a pending row: start -> run -> terminal, awaiting `publish(seq, event)` for every event
        (seq 1 is ExecutionCreated). A row that is not pending is not run: its recorded outcome is returned.
        A cancel request (cancel_requested_at) stops the run within about a second."""
        related = AgentExecution.objects.select_related("agent", "user", "conversation")
        execution = await related.filter(pk=execution_id).afirst()
        if execution is None:
            raise ApplicationError(f"execution {execution_id} not found", code="not_found", status=404)
        if execution.status != Status.PENDING:
            return result_from_row(execution)
        try:
            if execution.agent is None:
                raise ApplicationError(
                    "the agent of this execution was deleted", code="not_found", status=404
                )
            prepared = await self.prepare(
                execution.agent,
                execution.input_data,
                execution.user,
                execution.context,
                conversation=execution.conversation,
            )
        except ApplicationError as exc:
            # Valid when it was queued, not any more (the agent was deactivated or deleted): nothing can run.
            with contextlib.suppress(IllegalTransition):
                await self.state.afail_execution(
                    execution, code="provider_error", message=f"cannot run: {exc.message}"
                )
            return result_from_row(await self.state.aget_execution(execution.pk) or execution)
        try:
            execution = await self.state.astart_execution(execution)
        except IllegalTransition:  # cancelled (or reaped) between the read and the start
            return result_from_row(await self.state.aget_execution(execution.pk) or execution)
        seq = 0
        event: Any = None
        async for event in self._events(prepared, execution, stream=True):
            seq += 1
            if publish is not None:
                try:
                    await publish(seq, event)
                except Exception:  # the row is the record; a lost event must not stop the run
                    logger.exception(
                        "publishing event %d failed", seq, extra={"execution_id": str(execution.pk)}
                    )
        return event.result

    async def get_execution_status(self, execution_id: Any) -> dict[str, Any]:
        execution = await self.state.aget_execution(execution_id)
        if execution is None:
            raise ApplicationError(f"execution {execution_id} not found", code="not_found", status=404)
        return status_body(execution)

    async def cancel(self, execution_id: Any) -> bool:
        """Cancel a pending or running execution; False if it is unknown or already over.

        A pending row is cancelled at once. A running one is flagged (cancel_requested_at); the process that
        runs it stops it within about a second (at once when that is this process) and records `cancelled`.
        """
        execution = await AgentExecution.objects.select_related("agent").filter(pk=execution_id).afirst()
        if execution is None or execution.status in TERMINAL_STATUSES:
            return False
        if execution.status == Status.PENDING:
            try:
                await self.state.acancel_execution(execution, message="cancelled before it started")
            except IllegalTransition:
                pass  # it started meanwhile: flag it like a running one
            else:
                if execution.conversation_id is not None:
                    await Conversation.objects.filter(
                        pk=execution.conversation_id, active_execution_id=execution.pk
                    ).aupdate(active_execution=None)
                await anotify_cancel(execution.pk)  # readers of its events learn it ended
                return True
        flagged = await sync_to_async(self.state.request_cancel)(execution)
        if flagged and not self.stop_local(execution.pk):
            await anotify_cancel(execution.pk)  # the worker holding it stops at once, not at its next poll
        return flagged

    def stop_local(self, execution_id: Any) -> bool:
        """Stop a run of this process now (thread-safe); False if this process does not hold it."""
        stop_now = self._local.get(str(execution_id))
        if stop_now is not None:
            stop_now()
        return stop_now is not None

    # ------------------------------------------------------------------ one run
    async def _events(
        self, prepared: PreparedRun, execution: AgentExecution, *, stream: bool
    ) -> AsyncIterator[Any]:
        """Run the agent for `execution`, yielding ExecutionCreated, the run's events, and a terminal event
        that carries the recorded result (execution_id set)."""
        execution_id = str(execution.pk)
        prepared.context.execution_id = execution_id
        # The run's tasks get their own context, so every log line they write carries the execution id.
        context = contextvars.copy_context()
        context.run(current_execution_id.set, execution_id)
        run = RunState()
        # MCP tools need their servers' schemas (cached per session); a server that is down still gives
        # its tools, whose calls tell the model why they failed.
        agent = self.build_agent(prepared.config, tools=await tools_for_run(prepared.config.tools))
        guard = guard_for(execution_id=execution.pk, budgets=prepared.budgets, registry=agent.registry)
        agent.spend_guard = guard
        queue: asyncio.Queue[Any] = asyncio.Queue()
        emit = queue.put if stream else None
        run_task = asyncio.create_task(
            agent.run(prepared.input_data, prepared.context, run=run, emit=emit), context=context
        )
        run_task.add_done_callback(lambda _: queue.put_nowait(_END))
        control = _Control()
        watcher = asyncio.create_task(self._watch(execution, run_task, control), context=context)
        loop = asyncio.get_running_loop()
        self._local[execution_id] = lambda: loop.call_soon_threadsafe(
            self._stop, run_task, control, "cancelled by request"
        )
        try:
            yield ExecutionCreated(execution_id, prepared.agent.agent_id)
            while (event := await queue.get()) is not _END:
                yield event
        except BaseException:
            # The caller went away (CancelledError, or GeneratorExit from aclose()): stop the run, which
            # closes the upstream request, and record what it got. The write is shielded; the exception
            # goes on.
            if not run_task.done():
                run_task.cancel()
                await asyncio.wait([run_task])
            if run_task.cancelled() or run_task.exception() is not None:
                result, target = (
                    run.partial_result("cancelled_by_user", "cancelled: the caller went away"),
                    Status.CANCELLED,
                )
            else:  # it had finished; only its terminal event was not delivered
                result = run_task.result()
                target = Status.COMPLETED if result.success else Status.FAILED
            await shielded(record_outcome(self.state, prepared, execution, result, target, run))
            raise
        finally:
            watcher.cancel()
            self._local.pop(execution_id, None)
            if guard is not None:  # the run is over: its concurrency slot is free
                await shielded(guard.close())
        if run_task.cancelled():
            result = run.partial_result("cancelled_by_user", control.reason or "cancelled")
            recorded = await shielded(
                record_outcome(self.state, prepared, execution, result, Status.CANCELLED, run)
            )
            yield terminal_event(recorded)  # what the row says (the reaper may have ended it first)
            return
        error = run_task.exception()
        if error is not None:
            logger.error("engine error", exc_info=error, extra={"execution_id": execution_id})
            # The exception's text stays in the log above: it can hold paths, SQL, anything.
            result = run.partial_result(
                "provider_error", f"internal error ({type(error).__name__}; details are in the server log)"
            )
        else:
            result = run_task.result()
        target = Status.COMPLETED if result.success else Status.FAILED
        result = await shielded(record_outcome(self.state, prepared, execution, result, target, run))
        yield terminal_event(result)  # the recorded outcome, not necessarily this run's own

    @staticmethod
    def _stop(run_task: asyncio.Task[Any], control: _Control, reason: str) -> None:
        if not run_task.done():
            control.reason = control.reason or reason
            run_task.cancel()

    async def _watch(self, execution: AgentExecution, run_task: asyncio.Task[Any], control: _Control) -> None:
        """Heartbeat every EXECUTION_HEARTBEAT_SECONDS; every EXECUTION_CANCEL_POLL_SECONDS (default 1), stop
        the run when a cancel was requested (from any process) or the row was ended elsewhere (the reaper)."""
        beat = max(0.05, float(settings.EXECUTION_HEARTBEAT_SECONDS))
        poll = min(float(getattr(settings, "EXECUTION_CANCEL_POLL_SECONDS", 1.0)), beat)
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + beat
        while not run_task.done():
            await asyncio.sleep(poll)
            try:
                due = loop.time() >= next_beat
                if due:
                    next_beat = loop.time() + beat
                # Its own unit of work: no connection is held between polls (services/db.py).
                alive = await self.state.astill_wanted(execution, beat=due)
            except Exception:  # a database hiccup must not kill the run; the reaper covers a dead process
                logger.warning("heartbeat failed", exc_info=True, extra={"execution_id": str(execution.pk)})
                continue
            if not alive:
                self._stop(run_task, control, "cancelled by request")
                return


execution_engine = ExecutionEngine()

# `from apps.agents.services import execution_engine` binds this module (a package attribute), so the seed's
# `execution_engine.execute_agent(...)` calls these (see apps/agents/services/__init__.py).
execute_agent = execution_engine.execute_agent
execute_streaming = execution_engine.execute_streaming
run_execution = execution_engine.run_execution
create_pending = execution_engine.create_pending
get_execution_status = execution_engine.get_execution_status
cancel = execution_engine.cancel
