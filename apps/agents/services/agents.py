"""Writes to agents (HackSoft services). Every write runs the model's full_clean, so the rules live in one
place (models.py: slug, temperature 0..2, JSON Schema, limits) and the API answers 400 naming the field
instead of letting a CHECK constraint turn into a 500."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.agents.errors import ApplicationError
from apps.agents.models import Agent
from apps.agents.services.limits import check_agent_limits

# What a client may set; everything else (id, owner, timestamps) is decided here.
EDITABLE_FIELDS = (
    "name",
    "agent_id",
    "description",
    "agent_type",
    "system_prompt",
    "capabilities",
    "preferred_platform",
    "model",
    "temperature",
    "max_tokens",
    "output_schema",
    "tools",
    "is_shared",
    "is_active",
    "timeout_seconds",
    "max_retries",
    "history_window",
    "max_tool_calls",
)


_TAKEN = "An agent with this agent_id already exists."


def _invalid(exc: ValidationError) -> ApplicationError:
    fields = {
        ("non_field_errors" if k == "__all__" else k): [str(m) for m in v]
        for k, v in exc.message_dict.items()
    }
    taken = any(error.code == "unique" for error in exc.error_dict.get("agent_id", []))
    if taken and set(fields) == {"agent_id"}:
        # Well-formed but already used: a conflict with existing state, not a malformed request.
        return ApplicationError(_TAKEN, code="conflict", status=409, fields={"agent_id": [_TAKEN]})
    names = ", ".join(sorted(fields))
    return ApplicationError(f"Invalid agent: {names}.", code="invalid", status=400, fields=fields)


def _save(agent: Agent, *, creating: bool) -> Agent:
    try:
        agent.full_clean()
    except ValidationError as exc:
        raise _invalid(exc) from exc
    owner = agent.owner if agent.owner_id is not None else None
    check_agent_limits(agent, staff=bool(owner is not None and owner.is_staff))
    try:
        # The savepoint keeps a failed INSERT (two clients racing for one slug) from breaking an outer
        # transaction.
        with transaction.atomic():
            agent.save(force_insert=creating)
    except IntegrityError as exc:
        # full_clean checked uniqueness, but another request may have taken the slug since.
        raise ApplicationError(_TAKEN, code="conflict", status=409, fields={"agent_id": [_TAKEN]}) from exc
    return agent


def _apply(agent: Agent, data: Mapping[str, Any]) -> None:
    unknown = set(data) - set(EDITABLE_FIELDS)
    if unknown:
        raise ApplicationError(
            f"Unknown agent fields: {', '.join(sorted(unknown))}.",
            fields={name: ["Unknown field."] for name in sorted(unknown)},
        )
    for name, value in data.items():
        setattr(agent, name, value)


def agent_create(*, owner: Any, data: Mapping[str, Any]) -> Agent:
    agent = Agent(owner=owner)
    _apply(agent, data)
    return _save(agent, creating=True)


def agent_update(*, agent: Agent, data: Mapping[str, Any]) -> Agent:
    _apply(agent, data)
    return _save(agent, creating=False)


def agent_delete(*, agent: Agent) -> None:
    # Executions keep their record (agent -> NULL, agent_slug stays): cost and history outlive the agent.
    agent.delete()
