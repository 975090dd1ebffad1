"""A run's admission on the event loop, for the requests whose admission needs neither a query nor a thread.

Why: a unit of database work is a thread hop (services/loop_writes.py), and a synchronous run request took two:
its admission and its final write. The final write goes from the loop already; with both on the loop (a
measurement with the units blocking the loop, never shipped) a server served 1.25x the runs with 20 % less
CPU per run (bench/ab.py, 2026-12-04). Most run requests need nothing from the database to be admitted but the
INSERT: the token, the agent and the budgets that apply are in this process's memory (the "auth" cache's near
copies, config/near_cache.py), the rate limits are one Redis round trip (its asyncio client) and the
validation is CPU.

So the execute route (api/execute_route.py admit_on_loop) and the engine's own entry points
(ExecutionEngine._admit: execute_agent, open_stream) admit on the loop when `available`, `ready` and `plan`
say they can: PostgreSQL with the pool and DB_ASYNC_WRITERS (async_writes), no Idempotency-Key (a replay reads
the earlier row first), and nothing to read or compute that does not belong on the loop:
- no conversation (its messages are a query; so is the claim that makes a second run of it a 409);
- no budget that applies (a budgeted run's first hold is written with the row by budget_ledger, in a unit);
- no output schema (its first compile is CPU the admission's thread takes, services/execution_prepare.py);
- an agent within the non-staff limits (past them its owner is read to know if staff allowed it);
- the budgets' cache entry held in this process (otherwise it is read, and written, in the unit).
Every other request is admitted in its thread as before, by the same code: ExecutionEngine.admit. The answers
are the same either way (tests/agents/api/test_loop_admission.py holds them equal). Measured: 1.26-1.32x the
requests/s of the same server admitting in its thread, 18-20 % less CPU per run request (`bench/ab.py @cf1888b
--`, 2026-12-04); in-process, 0.52-0.69x LiteLLM's overhead against 1.08-1.09x (README: Performance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apps.agents.engine.request_options import RequestOptions
from apps.agents.models import Agent
from apps.agents.services import budget_cache
from apps.agents.services.execution_prepare import PreparedRun, prepare_run
from apps.agents.services.limits import limit_errors
from apps.agents.services.loop_writes import ainsert_row, async_writes
from apps.agents.services.state_manager import state_manager

if TYPE_CHECKING:  # imported at call time: the API's module graph stays free of the engine's (api/runs.py)
    from apps.agents.services.execution_engine import AdmittedRun


def available() -> bool:
    """Whether a run may be admitted on the loop at all: its INSERT goes from the loop (async_writes)."""
    return async_writes()


def ready(agent: Any, user: Any) -> bool:
    """Whether running `agent` for `user` can be admitted on the loop as far as the agent and the budgets
    tell (the module docstring; the request's own content is plan's to judge). Nothing read or written."""
    if not isinstance(agent, Agent) or agent.output_schema or limit_errors(agent, staff=False):
        return False
    user_id = user.pk if getattr(user, "is_authenticated", False) else None
    applicable = budget_cache.peek(user_id, agent.pk)
    return applicable is not None and not applicable.budgets


def plan(
    agent: Agent,
    input_data: Any,
    user: Any,
    context: Any,
    *,
    options: RequestOptions | None = None,
) -> PreparedRun | None:
    """The validated run (prepare_run: ApplicationError for a bad request, as in the thread), or None when its
    admission needs the database or the thread (a conversation): then nothing was read or written. Only
    where available() and ready(agent, user).

    The validation is CPU linear in the request, as the run's own work on the loop right after it (its
    prompt rendered, the SDK's request body): the route bounds what it parses on the loop (LOOP_BODY_BYTES),
    the facade's and in-process callers' inputs are already objects."""
    if isinstance(context, Mapping) and context.get("conversation_id"):
        return None
    return prepare_run(agent, input_data, user, context, options=options)


async def admit(prepared: PreparedRun, *, mode: str, request_hash: str) -> AdmittedRun:
    """ExecutionEngine.admit of a planned run (sync or stream: inserted `running`), its INSERT sent from the
    loop. No Idempotency-Key (a replay is a read first: the thread's), no budget, no conversation to claim."""
    from apps.agents.services.execution_engine import AdmittedRun

    execution = state_manager.new_execution(
        **prepared.create_kwargs(mode=mode, running=True), request_hash=request_hash
    )
    await ainsert_row(execution)
    execution.replayed = False
    return AdmittedRun(prepared, execution)
