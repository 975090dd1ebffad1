"""Reads for the API (HackSoft selectors): what a user may see, and lookups that answer None for both
"does not exist" and "is not yours", so that a view cannot tell them apart (BOLA: someone else's object is
404).

Visibility rules (ARCHITECTURE.md, Security rules):
- agents: your own (active or not), plus active shared ones; staff see all;
- executions and conversations: your own; staff see all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet

from apps.agents.models import SLUG_VALIDATOR, Agent, AgentExecution, Conversation, Message


def _is_staff(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False))


def parse_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _is_slug(value: str) -> bool:
    # The model's own pattern: a value that cannot be a slug (NUL bytes, 4 KB of junk) never reaches SQL.
    return len(value) <= 100 and SLUG_VALIDATOR.regex.fullmatch(value) is not None


# -------------------------------------------------------------------------------- agents
def agents_visible_to(user: Any) -> QuerySet[Agent]:
    agents = Agent.objects.select_related("owner")
    if _is_staff(user):
        return agents
    return agents.filter(Q(owner=user) | Q(is_shared=True, is_active=True))


def agent_key_filter(key: str) -> Q | None:
    """`{id}` in a URL or a filter: the primary key (UUID) or the slug `agent_id`. None: it can be neither."""
    pk = parse_uuid(key)
    if pk is not None:
        return Q(pk=pk)
    if _is_slug(key):
        return Q(agent_id=key)
    return None


def agent_get_visible(*, user: Any, key: str) -> Agent | None:
    where = agent_key_filter(key)
    if where is None:
        return None
    return agents_visible_to(user).filter(where).first()


def agent_can_write(*, user: Any, agent: Agent) -> bool:
    return _is_staff(user) or (agent.owner_id is not None and agent.owner_id == getattr(user, "pk", None))


SHARE_PERMISSION = "agents.share_agent"


def agent_can_share(*, user: Any) -> bool:
    """Making an agent visible to every user (and changing one that is) is a staff privilege, which staff
    may grant with the `agents.share_agent` permission (superusers hold every permission)."""
    if _is_staff(user):
        return True
    has_perm = getattr(user, "has_perm", None)
    return bool(has_perm is not None and has_perm(SHARE_PERMISSION))


# -------------------------------------------------------------------------------- executions
@dataclass(frozen=True, slots=True)
class ExecutionFilters:
    agent: str | None = None
    status: str | None = None
    conversation: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def executions_visible_to(user: Any) -> QuerySet[AgentExecution]:
    executions = AgentExecution.objects.all()
    if _is_staff(user):
        return executions
    return executions.filter(user=user)


def execution_list(*, user: Any, filters: ExecutionFilters) -> QuerySet[AgentExecution]:
    executions = executions_visible_to(user)
    if filters.agent is not None:
        pk = parse_uuid(filters.agent)
        # A slug matches the recorded agent_slug too, so runs of a deleted agent can still be found.
        executions = (
            executions.filter(agent_id=pk) if pk is not None else executions.filter(agent_slug=filters.agent)
        )
    if filters.status is not None:
        executions = executions.filter(status=filters.status)
    if filters.conversation is not None:
        executions = executions.filter(conversation_id=filters.conversation)
    if filters.created_after is not None:
        executions = executions.filter(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        executions = executions.filter(created_at__lt=filters.created_before)
    return executions


def execution_get_visible(*, user: Any, execution_id: object) -> AgentExecution | None:
    pk = parse_uuid(execution_id)
    if pk is None:
        return None
    return executions_visible_to(user).filter(pk=pk).first()


# -------------------------------------------------------------------------------- conversations
def conversations_visible_to(user: Any) -> QuerySet[Conversation]:
    conversations = Conversation.objects.select_related("agent").annotate(message_count=Count("messages"))
    if _is_staff(user):
        return conversations
    return conversations.filter(owner=user)


def conversation_get_visible(
    *, user: Any, conversation_id: object, with_messages: bool = False
) -> Conversation | None:
    pk = parse_uuid(conversation_id)
    if pk is None:
        return None
    conversations = conversations_visible_to(user)
    if with_messages:
        conversations = conversations.prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("position"))
        )
    return conversations.filter(pk=pk).first()
