"""Every status change of an execution goes through here (seed: StateManager).

Each transition is one conditional UPDATE (`filter(pk=..., status__in=allowed).update(...)`), so two
processes racing to finish the same row cannot both win, and a terminal row never changes again. An illegal
transition raises IllegalTransition and writes nothing.

`completed` also requires that no cancel was requested (cancel_requested_at is null).

Lifecycle: pending -> running -> completed | failed | cancelled, pending -> cancelled, and pending -> failed
(ARCHITECTURE.md omits the last; without it a queued row whose message was lost could never end).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.db.models import Q
from django.utils import timezone

from apps.agents.errors import IllegalTransition
from apps.agents.models import Agent, AgentExecution, Conversation, ExecutionMode, ExecutionStatus
from apps.agents.services.db import (
    Along,
    Condition,
    Write,
    db_unit,
    insert_row,
    update_row,
)
from apps.agents.services.loop_writes import aread_field, async_writes, aupdate_row

logger = logging.getLogger(__name__)

S = ExecutionStatus
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    S.RUNNING: (S.PENDING,),
    S.COMPLETED: (S.RUNNING,),
    S.FAILED: (S.PENDING, S.RUNNING),
    S.CANCELLED: (S.PENDING, S.RUNNING),
}


class NotAdmitted(Exception):
    """The condition a new row was to be inserted on did not hold: nothing was written."""


# Slack on top of an agent's own timeout before the reaper may call a silent running row lost.
DEADLINE_GRACE = timedelta(seconds=30)


def _attempt_dicts(attempts: Iterable[Any]) -> list[dict[str, Any]]:
    return [a.to_dict() if hasattr(a, "to_dict") else dict(a) for a in attempts]


class StateManager:
    """Sync methods for views, tasks and commands; `a`-prefixed async twins for the engine."""

    # ---------------------------------------------------------------- create
    def new_execution(
        self,
        *,
        agent: Agent,
        input_data: Mapping[str, Any],
        user: Any = None,
        context: Mapping[str, Any] | None = None,
        conversation: Conversation | None = None,
        mode: str = ExecutionMode.SYNC,
        running: bool = False,
        idempotency_key: str | None = None,
        request_hash: str = "",
        metadata: Mapping[str, Any] | None = None,
        pending_deadline: timedelta | None = None,
    ) -> AgentExecution:
        now = timezone.now()
        execution = AgentExecution(
            agent=agent,
            agent_slug=agent.agent_id,
            user=user if getattr(user, "is_authenticated", False) else None,
            conversation=conversation,
            mode=mode,
            input_data=dict(input_data),
            context=dict(context or {}),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            metadata=dict(metadata or {}),
        )
        if running:
            # Synchronous runs are inserted already running: one write instead of two (ARCHITECTURE.md).
            execution.status = S.RUNNING
            execution.started_at = now
            execution.heartbeat_at = now
            execution.deadline_at = now + timedelta(seconds=agent.timeout_seconds) + DEADLINE_GRACE
        else:
            execution.status = S.PENDING
            execution.deadline_at = now + (pending_deadline or timedelta(hours=1))
        return execution

    def create_execution(
        self, *, only_if: Condition | None = None, write: Write | None = None, **kwargs: Any
    ) -> AgentExecution:
        """Insert a new row; with `only_if`, only if that SQL condition holds when it is written (else
        NotAdmitted, and nothing is written); `write`: how (with a budget hold in its round trip)."""
        execution = self.new_execution(**kwargs)
        # A lean INSERT (services/db.py): the values save() would write, without the ORM's query building.
        if not insert_row(execution, only_if=only_if, write=write):
            raise NotAdmitted()
        return execution

    async def acreate_execution(self, **kwargs: Any) -> AgentExecution:
        return await _units.create_execution(self, **kwargs)

    # ---------------------------------------------------------------- transitions
    def _plan(
        self, execution: AgentExecution, target: str, fields: dict[str, Any]
    ) -> tuple[Q, dict[str, Any]]:
        """The transition's condition (as a Q, for callers that add their own) and the fields it writes."""
        fields = self._fields(execution, target, fields)
        where = Q(pk=execution.pk, status__in=ALLOWED_FROM[target])
        if target == S.COMPLETED:
            where &= Q(cancel_requested_at__isnull=True)
        return where, fields

    def _fields(self, execution: AgentExecution, target: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = timezone.now()
        fields = {**fields, "status": target, "updated_at": now}
        if target == S.RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", now)
            timeout = execution.agent.timeout_seconds if execution.agent_id else 3600
            fields.setdefault("deadline_at", now + timedelta(seconds=timeout) + DEADLINE_GRACE)
        else:
            fields.setdefault("finished_at", now)
            if fields.get("execution_time") is None:
                started = execution.started_at
                fields["execution_time"] = (now - started).total_seconds() if started else 0.0
        return fields

    def _applied(self, execution: AgentExecution, fields: dict[str, Any]) -> AgentExecution:
        for name, value in fields.items():
            setattr(execution, name, value)
        return execution

    def _illegal(self, execution: AgentExecution, target: str) -> IllegalTransition:
        current = AgentExecution.objects.filter(pk=execution.pk).values_list("status", flat=True).first()
        return IllegalTransition(execution.pk, current, target)

    def transition(
        self, execution: AgentExecution, target: str, *, along: Along | None = None, **fields: Any
    ) -> AgentExecution:
        """`along`: statements written in the UPDATE's transaction, before it (services/db.py update_row)."""
        fields, where_in, where_null = self._update(execution, target, fields)
        changed = update_row(
            AgentExecution, execution.pk, fields, where_in=where_in, where_null=where_null, along=along
        )
        if changed != 1:
            raise self._illegal(execution, target)
        return self._transitioned(execution, target, fields)

    async def atransition(
        self, execution: AgentExecution, target: str, *, along: Along | None = None, **fields: Any
    ) -> AgentExecution:
        if not async_writes():
            # One unit of work (services/db.py): the connection goes back to the pool as soon as it is written.
            return await _units.transition(self, execution, target, along=along, **fields)
        # The same UPDATE, sent from the event loop (services/loop_writes.py).
        fields, where_in, where_null = self._update(execution, target, fields)
        changed = await aupdate_row(
            AgentExecution, execution.pk, fields, where_in=where_in, where_null=where_null, along=along
        )
        if changed != 1:  # what the row says instead, read on the loop too: no unit slot to wait for
            current = await aread_field(AgentExecution, execution.pk, "status")
            raise IllegalTransition(execution.pk, current, target)
        return self._transitioned(execution, target, fields)

    def _update(
        self, execution: AgentExecution, target: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Sequence[str]], tuple[str, ...]]:
        """The transition's fields and the conditions of its UPDATE (the same as _plan's filter, for a lean
        statement: services/db.py). A cancel request is final: a run whose cancel was requested never ends
        completed, even when its answer arrives before the process holding it notices the request
        (record_outcome then records it cancelled)."""
        fields = self._fields(execution, target, fields)
        no_cancel = ("cancel_requested_at",) if target == S.COMPLETED else ()
        return fields, {"status": ALLOWED_FROM[target]}, no_cancel

    def _transitioned(self, execution: AgentExecution, target: str, fields: dict[str, Any]) -> AgentExecution:
        logger.info("execution %s -> %s", execution.pk, target, extra={"execution_id": str(execution.pk)})
        return self._applied(execution, fields)

    @staticmethod
    def _outcome_fields(
        *,
        output: Any = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: Decimal = Decimal("0"),
        platform: str | None = None,
        model: str | None = None,
        attempts: Sequence[Any] = (),
        execution_time: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "output": output,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost": cost,
            "platform_used": platform or "",
            "model_used": model or "",
            "attempts": _attempt_dicts(attempts),
            "execution_time": execution_time,
        }
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        return fields

    def start_execution(self, execution: AgentExecution) -> AgentExecution:
        return self.transition(execution, S.RUNNING)

    async def astart_execution(self, execution: AgentExecution) -> AgentExecution:
        return await self.atransition(execution, S.RUNNING)

    def complete_execution(
        self, execution: AgentExecution, *, along: Along | None = None, **outcome: Any
    ) -> AgentExecution:
        return self.transition(execution, S.COMPLETED, along=along, **self._completed(outcome))

    async def acomplete_execution(
        self, execution: AgentExecution, *, along: Along | None = None, **outcome: Any
    ) -> AgentExecution:
        return await self.atransition(execution, S.COMPLETED, along=along, **self._completed(outcome))

    def fail_execution(
        self,
        execution: AgentExecution,
        *,
        code: str,
        message: str,
        along: Along | None = None,
        **outcome: Any,
    ) -> AgentExecution:
        return self.transition(execution, S.FAILED, along=along, **self._ended(code, message, outcome))

    async def afail_execution(self, execution: AgentExecution, **arguments: Any) -> AgentExecution:
        """fail_execution's arguments, as one unit of work."""
        return await _units.fail_execution(self, execution, **arguments)

    def cancel_execution(
        self,
        execution: AgentExecution,
        *,
        message: str = "cancelled",
        along: Along | None = None,
        **outcome: Any,
    ) -> AgentExecution:
        fields = self._ended("cancelled_by_user", message, outcome)
        return self.transition(execution, S.CANCELLED, along=along, **fields)

    async def acancel_execution(self, execution: AgentExecution, **arguments: Any) -> AgentExecution:
        """cancel_execution's arguments, as one unit of work."""
        return await _units.cancel_execution(self, execution, **arguments)

    @classmethod
    def _completed(cls, outcome: Mapping[str, Any]) -> dict[str, Any]:
        return {"error_code": "", "error_message": "", **cls._outcome_fields(**outcome)}

    @classmethod
    def _ended(cls, code: str, message: str, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """A failed or cancelled row's fields: its error (the message capped) and what the run used."""
        return {"error_code": code, "error_message": message[:10_000], **cls._outcome_fields(**outcome)}

    # ---------------------------------------------------------------- liveness
    def heartbeat(self, execution: AgentExecution) -> bool:
        """Mark a running row alive. False when the row is no longer running (another process ended it)."""
        return (
            AgentExecution.objects.filter(pk=execution.pk, status=S.RUNNING).update(
                heartbeat_at=timezone.now()
            )
            == 1
        )

    def request_cancel(self, execution: AgentExecution) -> bool:
        """Flag a live row for cancellation by whichever process holds it. False if it is already terminal."""
        now = timezone.now()
        updated = AgentExecution.objects.filter(pk=execution.pk, status__in=(S.PENDING, S.RUNNING)).update(
            cancel_requested_at=now, updated_at=now
        )
        if updated:
            execution.cancel_requested_at = now
        return updated == 1

    # ---------------------------------------------------------------- reads
    def get_execution(self, execution_id: Any) -> AgentExecution | None:
        return AgentExecution.objects.select_related("agent").filter(pk=execution_id).first()

    async def aget_execution(self, execution_id: Any) -> AgentExecution | None:
        return await _units.get_execution(self, execution_id)

    def get_agent_executions(self, agent: Agent, limit: int = 50) -> list[AgentExecution]:
        return list(AgentExecution.objects.filter(agent=agent).order_by("-created_at")[:limit])

    async def aget_agent_executions(self, agent: Agent, limit: int = 50) -> list[AgentExecution]:
        return [e async for e in AgentExecution.objects.filter(agent=agent).order_by("-created_at")[:limit]]


# The async twins' work: each a sync method run as one unit that releases its connection (services/db.py).
# A namespace, not class attributes: asgiref's wrappers would bind as methods there.
_units = SimpleNamespace(
    create_execution=db_unit(StateManager.create_execution),
    transition=db_unit(StateManager.transition),
    fail_execution=db_unit(StateManager.fail_execution),
    cancel_execution=db_unit(StateManager.cancel_execution),
    heartbeat=db_unit(StateManager.heartbeat),
    get_execution=db_unit(StateManager.get_execution),
)


state_manager = StateManager()
