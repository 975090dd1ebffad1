"""Idempotency-Key on execute (sync, stream and background) and the admission of a new execution.

`admit_execution` is the one way an execute request becomes a row:
- with a key, the same user's earlier row with that key (within IDEMPOTENCY_WINDOW) is returned instead of a
  new one, after checking the request is the same one (`request_hash`, sha256 of the canonical JSON body);
  a different body with a reused key is a 422 `idempotency_key_reused`;
- two identical requests racing each other are decided by the unique constraint (user, idempotency_key):
  both try to INSERT, one wins, the loser catches IntegrityError and returns the winner's row. The read
  before the insert is only a fast path for plain retries, never what makes it correct;
- the row and the conversation claim (apps/agents/services/conversation_lock.py) are one transaction, so a
  409 `conversation_busy` leaves no row behind and does not use up the key;
- a budget that could not admit even one attempt (exhausted, held in full, at its concurrency limit) refuses
  the request with a 429 `budget_exceeded` and no row: the INSERT is conditional on it (services/budgets.py
  admission_condition), so admission costs no read of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.agents.engine.context import AgentResult
from apps.agents.engine.spend import AttemptSpec
from apps.agents.errors import ApplicationError
from apps.agents.models import TERMINAL_STATUSES, AgentExecution
from apps.agents.services.budgets import (
    BudgetLimits,
    Hold,
    admission_condition,
    admission_hold,
    admission_refusal,
    applicable_budgets,
)
from apps.agents.services.conversation_lock import claim_conversation
from apps.agents.services.db import afirst
from apps.agents.services.state_manager import DEADLINE_GRACE, NotAdmitted, state_manager
from apps.platforms.registry import get_registry

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Admission:
    execution: AgentExecution
    # False: the row of an earlier request with the same key; nothing new was started, and the caller
    # answers with that execution's outcome (or its current state) instead of calling a provider.
    created: bool
    #: The budgets that apply to the run (services/budgets.py), as admission found them.
    budgets: tuple[BudgetLimits, ...] = ()
    #: What admission held for the run's first attempt, by kind (services/budgets.py AdmissionHold).
    held: Mapping[str, Hold] = field(default_factory=dict)


def request_hash(body: Any) -> str:
    """sha256 of the canonical JSON of a request body (key order and whitespace do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()


def clean_key(key: str | None) -> str | None:
    """The Idempotency-Key header as stored: None when absent or blank; 400 when unusable."""
    if key is None or not key.strip():
        return None
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApplicationError(
            f"Idempotency-Key must be at most {MAX_KEY_LENGTH} printable characters.",
            code="invalid_idempotency_key",
            fields={"idempotency_key": ["Invalid value."]},
        )
    return key


def _earlier(user: Any, key: str) -> AgentExecution | None:
    """The user's row with this key, if it is still within the window. An older one gives its key up
    (conditionally, so two requests expiring it at once do not clash) and the key starts afresh."""
    existing = AgentExecution.objects.select_related("agent").filter(user=user, idempotency_key=key).first()
    if existing is None:
        return None
    cutoff = timezone.now() - IDEMPOTENCY_WINDOW
    if existing.created_at >= cutoff:
        return existing
    AgentExecution.objects.filter(pk=existing.pk, idempotency_key=key, created_at__lt=cutoff).update(
        idempotency_key=None
    )
    return None


def _replay(existing: AgentExecution, body_hash: str) -> Admission:
    if existing.request_hash != body_hash:
        raise ApplicationError(
            "this Idempotency-Key was already used with a different request; use a new key for a new request",
            code="idempotency_key_reused",
            status=422,
            fields={"idempotency_key": ["reused with a different request body"]},
        )
    logger.info("idempotent replay of execution %s", existing.pk, extra={"execution_id": str(existing.pk)})
    return Admission(existing, created=False)


def admit_execution(
    *,
    idempotency_key: str | None = None,
    request_hash: str = "",
    first_attempt: AttemptSpec | None = None,
    **create: Any,
) -> Admission:
    """Create the execution row (StateManager.create_execution kwargs) unless the key names an earlier one.
    `first_attempt`: the run's first attempt as guessed, held with the row when a budget applies
    (services/budgets.py AdmissionHold).

    Raises ApplicationError 422 (key reused with another body) or ConversationBusy 409.
    """
    user = create.get("user")
    key = clean_key(idempotency_key) if getattr(user, "is_authenticated", False) else None
    if key is not None:
        existing = _earlier(user, key)
        if existing is not None:
            return _replay(existing, request_hash)
    # A lone INSERT is atomic by itself: a transaction (BEGIN and COMMIT, two more round trips) is needed only
    # to claim a conversation together with the row, or for a savepoint inside a caller's transaction, so that
    # the IntegrityError of a lost race leaves that transaction usable.
    needs_transaction = create.get("conversation") is not None or transaction.get_connection().in_atomic_block
    budgets = tuple(applicable_budgets(user=user, agent=create.get("agent")))
    first_hold = admission_hold(budgets, first_attempt, get_registry())
    try:
        with transaction.atomic() if needs_transaction else contextlib.nullcontext():
            execution = state_manager.create_execution(
                idempotency_key=key,
                request_hash=request_hash,
                only_if=admission_condition(budgets),
                write=first_hold.write if first_hold is not None else None,
                **create,
            )
            if execution.conversation_id is not None:
                claim_conversation(execution.conversation_id, execution.pk)
    except NotAdmitted:
        raise admission_refusal(budgets) from None
    except IntegrityError:
        # Lost the race to an identical request (the unique constraint), or something else entirely.
        existing = _earlier(user, key) if key is not None else None
        if existing is None:
            raise
        return _replay(existing, request_hash)
    return Admission(
        execution, created=True, budgets=budgets, held=first_hold.held if first_hold is not None else {}
    )


async def await_outcome(execution_id: Any, *, wait_seconds: float) -> AgentExecution | None:
    """The row once it is terminal (or as it is after `wait_seconds`): how a duplicate of a sync request
    that is still running gets the first request's response without a second provider call."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        execution = await afirst(AgentExecution.objects.select_related("agent").filter(pk=execution_id))
        if execution is None or execution.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
            return execution
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


async def replayed_result(execution: AgentExecution) -> AgentResult:
    """The first request's outcome, for a replay of it. While the first run is still going, wait for it
    (bounded by its own deadline: past that the reaper ends it)."""
    from apps.agents.services.execution_records import result_from_row

    timeout = execution.agent.timeout_seconds if execution.agent_id and execution.agent else 3600
    wait = timeout + DEADLINE_GRACE.total_seconds() + 5
    row = await await_outcome(execution.pk, wait_seconds=wait)
    return result_from_row(row or execution)
