"""ExecutionEngine: runs an Agent row on the engine and records the run (seed: execution_engine.py).

    admit: prepare (validate the input, load the conversation; a 4xx writes nothing) -> execution_prepare.py
      -> create the row (sync / stream: inserted already `running`; background: `pending`), in the same
         thread (the API's DRF half, or one unit of database work)
      -> the run stream: the engine runs in the stream's task, watched with every other run of the process
         (heartbeat, cancel requests; run_watcher.py); every client reads the stream's one queue -> run_stream.py
      -> one final conditional UPDATE through the StateManager (completed / failed / cancelled), also when
         the caller goes away (CancelledError, a closed stream); shielded  -> execution_records.py

A synchronous run costs two writes (the INSERT and the final UPDATE, attempts included); a conversation run
adds its messages and summary inside the final write's transaction. ORM work runs through Django's async
methods, or one sync_to_async per unit of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.agents.engine import AGENT_CLASSES, AgentConfig, AgentResult, BaseAgent, RunState, TaskAgent
from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.events import StreamEvent
from apps.agents.engine.request_options import RequestOptions
from apps.agents.engine.retry import RetryPolicy
from apps.agents.engine.spend import AttemptSpec, guess_first_attempt
from apps.agents.engine.tools import ToolRegistry
from apps.agents.errors import ApplicationError, IllegalTransition
from apps.agents.models import TERMINAL_STATUSES, Agent, AgentExecution, ExecutionMode
from apps.agents.models import ExecutionStatus as Status
from apps.agents.services import loop_admission
from apps.agents.services.background import anotify_cancel
from apps.agents.services.budgets import aapplicable_budgets, guard_for
from apps.agents.services.conversation_lock import arelease_conversation
from apps.agents.services.db import db_unit, kept_if_cancelled
from apps.agents.services.execution_prepare import PreparedRun, agent_config, prepare_run
from apps.agents.services.execution_records import result_from_row, status_body
from apps.agents.services.idempotency import admit_execution, replayed_result
from apps.agents.services.run_stream import Publish, RunStream, record_end, relay, replay_from_row, start_run
from apps.agents.services.state_manager import StateManager, state_manager
from apps.agents.services.tools import tools_for_run
from apps.platforms import registry as platform_registry
from apps.platforms.errors import PlatformError

__all__ = ["AdmittedRun", "ExecutionEngine", "PreparedRun", "RunStream", "agent_config", "execution_engine"]


class Admission(TypedDict, total=False):
    idempotency_key: str | None
    request_hash: str
    # Per-request options of the /v1 facade (sampling, client tools, a response schema).
    options: RequestOptions | None


@dataclass(frozen=True, slots=True)
class AdmittedRun:
    """A validated request and its row (ExecutionEngine.admit). `execution.replayed`: the row is an earlier
    request's (an Idempotency-Key replay), and nothing was written."""

    prepared: PreparedRun
    execution: AgentExecution


# prepare_run as one unit of database work, for a background row's run (run_execution).
_prepare_unit = db_unit(prepare_run)


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
        # The async entry points admit in one thread hop, after which the connection goes back to the pool.
        self._admit_unit = db_unit(self.admit)

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
        return await _prepare_unit(agent, input_data, user, context, **kwargs)

    def admit(
        self,
        agent: Agent,
        input_data: Any,
        user: Any = None,
        context: Any = None,
        *,
        mode: str,
        **admission: Unpack[Admission],
    ) -> AdmittedRun:
        """Validate a request and create its row, in the calling thread (sync ORM work). The one place a row
        is created (but for loop_admission.py's, the same row for a request without an Idempotency-Key, a
        budget or a conversation): idempotent admission and the conversation claim (409), see
        apps/agents/services/idempotency.py. Bad input raises ApplicationError before anything is written.

        The API calls this in its DRF half (api/runs.py), so that a run request's admission shares that
        half's thread hop and database connection instead of taking its own (a hop costs about 2.5 % of a
        run request's throughput); the async entry points below call it as one unit of database work."""
        options = admission.pop("options", None)
        prepared = prepare_run(agent, input_data, user, context, options=options)
        running = mode != ExecutionMode.BACKGROUND  # sync and stream rows are inserted already running
        # A budget already exhausted (or at its concurrency limit) refuses the request in the INSERT: no row.
        # A run that starts now has its first attempt's worst case held in the INSERT's round trip too.
        admitted = admit_execution(
            **prepared.create_kwargs(mode=mode, running=running),
            first_attempt=self.first_attempt(prepared) if running else None,
            **admission,
        )
        admitted.execution.replayed = not admitted.created
        prepared.budgets, prepared.held = admitted.budgets, admitted.held
        return AdmittedRun(prepared, admitted.execution)

    def first_attempt(self, prepared: PreparedRun) -> AttemptSpec | None:
        """The run's first attempt as guessed before it runs (engine/spend.py guess_first_attempt): on the
        first platform of its chain, unless that one is cooling down (None: no guess)."""
        registry = platform_registry.get_registry()
        config = prepared.config
        chain = registry.chain(config.preferred_platform or None)
        if not chain or self.cooldowns_for(registry).remaining(chain[0]):
            return None
        model = config.model
        if not model:
            try:
                model = registry.get(chain[0]).default_model
            except PlatformError:
                return None
        output_cap = int(settings.MAX_OUTPUT_TOKENS)
        return guess_first_attempt(
            chain[0], model, config, prepared.input_data, prepared.context, output_cap=output_cap
        )

    async def _admit(
        self, agent: Agent, input_data: Any, user: Any, context: Any, mode: str, admission: Admission
    ) -> AdmittedRun:
        # On the loop when nothing in the admission needs a thread (services/loop_admission.py: no
        # Idempotency-Key, conversation or budget, the budgets' entry in memory, PostgreSQL), else one unit.
        # A caller cancelled meanwhile (an async view whose client left) has its row cancelled at once.
        planned = None
        if (
            mode != ExecutionMode.BACKGROUND
            and loop_admission.available()
            and not (admission.get("idempotency_key") or "").strip()
            and loop_admission.ready(agent, user)
        ):
            planned = loop_admission.plan(agent, input_data, user, context, options=admission.get("options"))
        if planned is not None:
            work = loop_admission.admit(planned, mode=mode, request_hash=admission.get("request_hash", ""))
        else:
            work = self._admit_unit(agent, input_data, user, context, mode=mode, **admission)
        return await kept_if_cancelled(work, self.abandon)

    # ------------------------------------------------------------------ the seed's contract
    # Each takes the seed's (agent, input_data, user, context) and, from the API, the Idempotency-Key and the
    # request's hash (Admission). Bad input raises ApplicationError before any row is written.
    async def execute_agent(
        self, agent: Agent, input_data: Any, user: Any = None, context: Any = None, **keys: Unpack[Admission]
    ) -> AgentResult:
        """Run to the end. Provider failures give success=False and `error` (never raise)."""
        return await self.run_admitted(
            await self._admit(agent, input_data, user, context, ExecutionMode.SYNC, keys)
        )

    async def run_admitted(self, admitted: AdmittedRun) -> AgentResult:
        """execute_agent's run of a row admitted in `sync` mode (see admit)."""
        if admitted.execution.replayed:
            return await replayed_result(admitted.execution)
        return await (await self._start(admitted.prepared, admitted.execution, streamed=False)).result()

    async def execute_streaming(
        self, agent: Agent, input_data: Any, user: Any = None, context: Any = None, **keys: Unpack[Admission]
    ) -> AsyncIterator[StreamEvent]:
        """ExecutionCreated, then deltas / tool events / fallbacks, then Completed | Failed | Cancelled.

        Bad input raises from the first __anext__(), before any row exists: await the first event before
        committing to a 200. Closing the iterator early (aclose, or cancelling its consumer) cancels the run,
        closes the upstream request and records the row as cancelled with what it got.
        """
        stream = await self.open_stream(agent, input_data, user, context, **keys)
        try:
            while (item := await stream.read()) is not None:
                yield item.event  # type: ignore[union-attr]
        finally:
            await stream.aclose()

    async def open_stream(
        self, agent: Agent, input_data: Any, user: Any = None, context: Any = None, **keys: Unpack[Admission]
    ) -> RunStream:
        """Create the row and start the run; its RunStream is what every streaming client renders
        (apps/agents/services/run_stream.py). The caller must `aclose()` it: closed before its end, it
        cancels the run."""
        return await self.stream_admitted(
            await self._admit(agent, input_data, user, context, ExecutionMode.STREAM, keys)
        )

    async def stream_admitted(self, admitted: AdmittedRun) -> RunStream:
        """open_stream's run of a row admitted in `stream` mode (see admit)."""
        if admitted.execution.replayed:
            return replay_from_row(admitted.execution)
        return await self._start(admitted.prepared, admitted.execution, streamed=True)

    async def abandon(
        self, admitted: AdmittedRun, reason: str = "cancelled: the caller went away before the run started"
    ) -> None:
        """A row admitted for a caller that went away before its run started (a client that disconnected
        while its request was admitted): recorded `cancelled` now, giving back what it held (the first
        attempt's budget room, the conversation), instead of staying `running` until the reaper ends it.
        Nothing is sent to a provider. An Idempotency-Key replay is left alone: the row is another
        request's."""
        prepared, execution = admitted.prepared, admitted.execution
        if execution.replayed:
            return
        if execution.status == Status.PENDING:
            await self.cancel(execution.pk)
            return
        run = RunState()
        guard = self._spend_guard(prepared, execution, platform_registry.get_registry())
        result = run.partial_result("cancelled_by_user", reason)
        await record_end(self.state, prepared, execution, guard, result, Status.CANCELLED, run)

    async def create_pending(
        self, agent: Agent, input_data: Any, user: Any = None, context: Any = None, **keys: Unpack[Admission]
    ) -> AgentExecution:
        """A validated `pending` row for a background run (run_execution runs it)."""
        return (await self._admit(agent, input_data, user, context, ExecutionMode.BACKGROUND, keys)).execution

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
        # Admitted when it was queued; its attempts reserve against the budgets that apply now.
        prepared.budgets = tuple(await aapplicable_budgets(user=execution.user, agent=execution.agent))
        stream = await self._start(prepared, execution, streamed=True)
        try:
            if publish is not None:
                await relay(stream, publish)
            return await stream.result()
        finally:
            await stream.aclose()

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
                    await arelease_conversation(execution.conversation_id, execution.pk)
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
    @staticmethod
    def _spend_guard(prepared: PreparedRun, execution: AgentExecution, registry: Any) -> Any:
        """The run's budget guard (None when no budget applies), holding what its admission held."""
        return guard_for(
            execution_id=execution.pk, budgets=prepared.budgets, registry=registry, held=prepared.held
        )

    async def _start(self, prepared: PreparedRun, execution: AgentExecution, *, streamed: bool) -> RunStream:
        # MCP tools need their servers' schemas (cached per session); a server that is down still gives
        # its tools, whose calls tell the model why they failed.
        agent = self.build_agent(prepared.config, tools=await tools_for_run(prepared.config.tools))
        agent.spend_guard = self._spend_guard(prepared, execution, agent.registry)
        stream = start_run(
            agent=agent,
            prepared=prepared,
            execution=execution,
            state=self.state,
            streamed=streamed,
        )
        execution_id = str(execution.pk)
        loop = asyncio.get_running_loop()
        self._local[execution_id] = lambda: loop.call_soon_threadsafe(stream.cancel, "cancelled by request")
        stream.when_done(lambda: self._local.pop(execution_id, None))
        return stream


execution_engine = ExecutionEngine()

#: The seed's module-level API. `from apps.agents.services import execution_engine` binds this module (a
#: package binds its submodules as attributes), so `execution_engine.execute_agent(...)` is looked up here.
SEED_API = (
    "execute_agent",
    "execute_streaming",
    "open_stream",
    "run_execution",
    "create_pending",
    "get_execution_status",
    "cancel",
)


def _instance_attribute(name: str) -> property:
    # Read, set and delete go to the instance: patching `module.execute_agent` (unittest.mock.patch,
    # monkeypatch) patches what every caller of the instance runs too, and the other way round.
    def set_(module: types.ModuleType, value: Any) -> None:
        engine = module.execution_engine
        if getattr(value, "__self__", None) is engine and getattr(value, "__func__", None) is getattr(
            type(engine), name, None
        ):
            vars(engine).pop(name, None)  # an undo puts the method back: nothing left patched
        else:
            setattr(engine, name, value)

    return property(
        lambda module: getattr(module.execution_engine, name),
        set_,
        lambda module: delattr(module.execution_engine, name),
    )


class _EngineModule(types.ModuleType):
    """This module, with the seed's functions as live views of the `execution_engine` instance."""


for _name in SEED_API:
    setattr(_EngineModule, _name, _instance_attribute(_name))
sys.modules[__name__].__class__ = _EngineModule
