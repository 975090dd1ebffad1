"""Writes to conversations (HackSoft services). Messages are appended by the execution engine; the API only
creates and deletes whole conversations."""

from __future__ import annotations

from typing import Any

from apps.agents.errors import ApplicationError
from apps.agents.models import Agent, Conversation


def conversation_create(*, owner: Any, agent: Agent | None = None, title: str = "") -> Conversation:
    conversation = Conversation(owner=owner, agent=agent, title=title)
    conversation.full_clean(exclude=["active_execution"])
    conversation.save(force_insert=True)
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    # A run in progress would write its answer into a conversation that no longer exists.
    if conversation.active_execution_id is not None:
        raise ApplicationError(
            "This conversation has an execution in progress; cancel it or wait for it to finish.",
            code="conversation_busy",
            status=409,
        )
    conversation.delete()
