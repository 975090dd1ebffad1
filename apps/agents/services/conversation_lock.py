"""One execution at a time per conversation, so its history is never interleaved.

`Conversation.active_execution` is the lock. Claiming is a compare-and-swap on that one column: read the
current holder, then UPDATE ... WHERE active_execution_id = <what was read> (or IS NULL). The condition is on
the row being updated, so the database decides between two racing claims on every backend (a condition
through a join would not be re-checked by PostgreSQL after waiting on the row lock). A holder that has
ended (or vanished) counts as free, so a release missed by a crash never locks a conversation for good.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async

from apps.agents.errors import ApplicationError
from apps.agents.models import TERMINAL_STATUSES, AgentExecution, Conversation

logger = logging.getLogger(__name__)

# Rounds of read-then-swap before giving up; each lost round means another claim won just now.
MAX_ROUNDS = 5


class ConversationBusy(ApplicationError):
    """409: documented in the API (a second run on a conversation while one is live)."""

    status = 409

    def __init__(self, conversation_id: Any, active_execution_id: Any) -> None:
        super().__init__(
            f"conversation {conversation_id} is running execution {active_execution_id}; "
            "wait for it to finish or cancel it",
            code="conversation_busy",
            fields={"active_execution_id": str(active_execution_id)},
        )
        self.active_execution_id = active_execution_id


def claim_conversation(conversation_id: Any, execution_id: Any) -> None:
    """Make `execution_id` the conversation's active execution, or raise ConversationBusy (409)."""
    holder: Any = None
    for _ in range(MAX_ROUNDS):
        rows = Conversation.objects.filter(pk=conversation_id)
        holder = rows.values_list("active_execution_id", flat=True).first()
        if holder == execution_id:
            return
        if holder is not None:
            status = AgentExecution.objects.filter(pk=holder).values_list("status", flat=True).first()
            if status is not None and status not in TERMINAL_STATUSES:
                raise ConversationBusy(conversation_id, holder)
        # Swap only if the holder is still the one just read (or still nobody).
        swap = rows.filter(active_execution_id=holder) if holder else rows.filter(active_execution=None)
        if swap.update(active_execution_id=execution_id) == 1:
            return
        if not rows.exists():
            message = f"conversation {conversation_id} does not exist"
            raise ApplicationError(message, code="not_found", status=404)
    raise ConversationBusy(conversation_id, holder)


def release_conversation(conversation_id: Any, execution_id: Any) -> bool:
    """Free the conversation if `execution_id` still holds it (idempotent)."""
    released = Conversation.objects.filter(pk=conversation_id, active_execution_id=execution_id).update(
        active_execution_id=None
    )
    return released == 1


# One sync_to_async per unit of work (the claim is several queries), not one per query.
aclaim_conversation = sync_to_async(claim_conversation)
arelease_conversation = sync_to_async(release_conversation)
