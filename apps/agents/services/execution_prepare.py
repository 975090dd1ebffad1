"""Turning an execute request into a validated run (part of the ExecutionEngine service).

Everything here happens before the execution row exists: a bad request raises ApplicationError (4xx, the
field named in `fields`) and nothing is written. Synchronous ORM work, run in a thread together with the
row's INSERT (ExecutionEngine.admit): the API's DRF half, or one unit of database work.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings

from apps.agents.engine import AgentConfig, AgentContext
from apps.agents.engine.inputs import InvalidInput, validate_context, validate_input
from apps.agents.engine.request_options import RequestOptions
from apps.agents.engine.schema_policy import SchemaLimits, SchemaRefused, build_validator
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent, Conversation, Message
from apps.agents.schema_policy import refusal_text, schema_limits
from apps.agents.services.budgets import BudgetLimits, Hold
from apps.agents.services.limits import check_run_limits


def agent_config(agent: Agent, limits: SchemaLimits | None = None) -> AgentConfig:
    return AgentConfig(
        agent_id=agent.agent_id,
        name=agent.name,
        agent_type=agent.agent_type,  # type: ignore[arg-type]
        system_prompt=agent.system_prompt,
        preferred_platform=agent.preferred_platform,
        model=agent.model,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        output_schema=agent.output_schema or None,
        tools=tuple(agent.tools or ()),
        capabilities=tuple(agent.capabilities or ()),
        timeout_seconds=float(agent.timeout_seconds),
        max_retries=agent.max_retries,
        history_window=agent.history_window,
        max_tool_calls=agent.max_tool_calls,
        schema_limits=limits or schema_limits(),
    )


@dataclass(slots=True)
class PreparedRun:
    """A validated request: everything needed to create the row and run the agent."""

    agent: Agent
    config: AgentConfig
    input_data: dict[str, Any]
    context: AgentContext
    raw_context: dict[str, Any]  # stored on the row (validated, nulls dropped)
    user: Any
    conversation: Conversation | None = None
    #: Positions of the conversation's messages in `context.conversation_history`, in the same order.
    positions: tuple[int, ...] = ()
    #: The budgets this run's attempts reserve against (apps/agents/services/budgets.py): found by its
    #: admission (the row's INSERT), or by run_execution for a background run.
    budgets: tuple[BudgetLimits, ...] = ()
    #: What its admission held for its first attempt, by kind (services/budgets.py AdmissionHold).
    held: Mapping[str, Hold] = field(default_factory=dict)

    def create_kwargs(self, *, mode: str, running: bool) -> dict[str, Any]:
        """StateManager.create_execution keyword arguments (also what idempotent admission takes)."""
        kwargs: dict[str, Any] = {
            "agent": self.agent,
            "input_data": self.input_data,
            "user": self.user,
            "context": self.raw_context,
            "conversation": self.conversation,
            "mode": mode,
            "running": running,
        }
        if not running:
            kwargs["pending_deadline"] = timedelta(seconds=float(settings.PENDING_DEADLINE_SECONDS))
        return kwargs


def _not_found() -> ApplicationError:
    return ApplicationError(
        "conversation not found",
        code="not_found",
        status=404,
        fields={"context.conversation_id": "no such conversation of yours"},
    )


def owned_conversation(conversation_id: Any, user: Any) -> Conversation:
    """The user's conversation with this id; someone else's answers 404 like a missing one."""
    try:
        pk = uuid.UUID(str(conversation_id))
    except ValueError:
        raise _not_found() from None
    if not getattr(user, "is_authenticated", False):
        raise _not_found()
    conversation = Conversation.objects.filter(pk=pk, owner=user).first()
    if conversation is None:
        raise _not_found()
    return conversation


def _check_stored_schema(agent: Agent, limits: SchemaLimits) -> None:
    """A stored agent whose schema the policy refuses (saved before the policy, or past the API) never runs.
    The first compile of a large schema happens here, in the admission's thread, never on the event loop
    (later ones are cached)."""
    try:
        build_validator(agent.output_schema, limits)
    except SchemaRefused as exc:
        raise ApplicationError(
            f"agent {agent.agent_id} cannot run: its output_schema is refused by the schema policy "
            f"({refusal_text(exc)}); fix the agent's output_schema",
            code="schema_refused",
            status=409,
            fields={"output_schema": refusal_text(exc)},
        ) from None


def prepare_run(
    agent: Agent,
    input_data: Any,
    user: Any = None,
    context: Any = None,
    *,
    conversation: Conversation | None = None,
    options: RequestOptions | None = None,
) -> PreparedRun:
    """Validate a request and load its conversation (one query for the messages the summary does not cover).

    `conversation` is passed by run_execution (the row's own, checked when the row was created); otherwise
    context["conversation_id"] must name a conversation `user` owns.
    """
    if not isinstance(agent, Agent):
        raise ApplicationError("agent must be an Agent", fields={"agent": "required"})
    if not agent.is_active:
        raise ApplicationError(f"agent {agent.agent_id} is inactive", code="agent_inactive", status=409)
    limits = schema_limits()
    if agent.output_schema:
        _check_stored_schema(agent, limits)
    check_run_limits(agent)
    max_chars = int(settings.MAX_TASK_CHARS)
    max_messages = int(settings.MAX_HISTORY_MESSAGES)
    try:
        data = validate_input(input_data, max_chars=max_chars)
        ctx = validate_context(context, max_messages=max_messages, max_chars=max_chars)
    except InvalidInput as exc:
        raise ApplicationError(
            str(exc), code="invalid", status=400, fields={exc.field: exc.problem}
        ) from None
    if conversation is None and ctx.get("conversation_id"):
        conversation = owned_conversation(ctx["conversation_id"], user)
    history: list[dict[str, Any]] = list(ctx.get("conversation_history") or ())
    summary: str = ctx.get("conversation_summary", "")
    positions: tuple[int, ...] = ()
    if conversation is not None:
        unsummarised = Message.objects.filter(
            conversation=conversation, position__gt=conversation.summary_upto
        )
        rows = list(
            unsummarised.order_by("-position").values(
                "position", "role", "content", "tool_calls", "tool_call_id"
            )[:max_messages]
        )
        rows.reverse()
        positions = tuple(row.pop("position") for row in rows)
        history, summary = rows, conversation.summary
    engine_context = AgentContext(
        user_id=str(user.pk) if getattr(user, "is_authenticated", False) else None,
        conversation_id=str(conversation.pk) if conversation is not None else None,
        conversation_history=history,
        conversation_summary=summary,
        metadata=dict(ctx.get("metadata") or {}),
        options=options,
    )
    return PreparedRun(
        agent, agent_config(agent, limits), data, engine_context, ctx, user, conversation, positions
    )
