"""Writes to agents (HackSoft services). Every write runs the model's full_clean, so the rules live in one
place (models.py: slug, temperature 0..2, JSON Schema, limits) and the API answers 400 naming the field
instead of letting a CHECK constraint turn into a 500.

Two rules belong to the acting user rather than to the row (README: Who can share agents):
- a shared agent is in every user's list and /v1/models, so making one shared, and changing one that is,
  takes staff or the `agents.share_agent` permission (403 naming the field); its owner may still unshare
  it, deactivate it or delete it, which only takes it away from others;
- the catalog's slugs (apps/agents/catalog/*.yaml) are reserved for the catalog (400 naming agent_id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.agents.catalog.slugs import is_catalog_slug
from apps.agents.errors import ApplicationError
from apps.agents.models import AGENT_CONFIG_FIELDS, Agent
from apps.agents.selectors import SHARE_PERMISSION, agent_can_share
from apps.agents.services.limits import check_agent_limits
from apps.agents.services.tools import unknown_tool_names

# What a client may set; everything else (id, owner, timestamps) is decided here.
EDITABLE_FIELDS = ("name", "agent_id", *AGENT_CONFIG_FIELDS, "is_shared", "is_active")


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


_RESERVED = "This agent_id is reserved for the built-in catalog."
_SHARE_DENIED = f"Only staff, or users with the {SHARE_PERMISSION} permission, may share an agent."
_SHARED_DENIED = (
    f"This agent is shared with every user: only staff, or users with the {SHARE_PERMISSION} permission, "
    "may change it. Its owner may unshare it (is_shared: false), deactivate it or delete it."
)
# What the owner of a shared agent may still change without the privilege: each only hides it from others.
_WITHDRAWALS = {"is_shared": False, "is_active": False}


def _check_slug(agent: Agent | None, data: Mapping[str, Any]) -> None:
    agent_id = data.get("agent_id")
    renamed = agent_id is not None and (agent is None or agent_id != agent.agent_id)
    if renamed and isinstance(agent_id, str) and is_catalog_slug(agent_id):
        raise ApplicationError(
            f"agent_id: {_RESERVED}", code="invalid", status=400, fields={"agent_id": [_RESERVED]}
        )


def _check_sharing(*, actor: Any, agent: Agent | None, data: Mapping[str, Any]) -> None:
    if agent_can_share(user=actor):
        return
    if agent is not None and agent.is_shared:
        changed = sorted(
            name
            for name, value in data.items()
            if value != getattr(agent, name, None) and _WITHDRAWALS.get(name, object()) != value
        )
        if changed:
            raise ApplicationError(
                _SHARED_DENIED,
                code="permission_denied",
                status=403,
                fields={name: [_SHARED_DENIED] for name in changed},
            )
        return
    if data.get("is_shared") is True:
        # 403, not 400: the request is well-formed and would succeed for staff; what is missing is a
        # privilege, not a correction to the input. The field is named so the client knows which one.
        raise ApplicationError(
            _SHARE_DENIED, code="permission_denied", status=403, fields={"is_shared": [_SHARE_DENIED]}
        )


def _check_tools(names: Any) -> None:
    """Only tools the deploying team registered may be allowlisted (GET /api/v1/tools/ lists them)."""
    if not isinstance(names, list):
        return  # full_clean names the field
    unknown = unknown_tool_names([name for name in names if isinstance(name, str)])
    if unknown:
        raise ApplicationError(
            f"Unknown tools: {', '.join(unknown)}.",
            code="invalid",
            status=400,
            fields={
                "tools": [f"{name!r} is not a registered tool (see GET /api/v1/tools/)." for name in unknown]
            },
        )


def agent_create(*, owner: Any, data: Mapping[str, Any]) -> Agent:
    _check_slug(None, data)
    _check_sharing(actor=owner, agent=None, data=data)
    agent = Agent(owner=owner)
    _apply(agent, data)
    _check_tools(agent.tools)
    return _save(agent, creating=True)


def agent_update(*, agent: Agent, data: Mapping[str, Any], actor: Any) -> Agent:
    """`actor` is who asks (the owner or staff: the view's permission class decided that already)."""
    _check_slug(agent, data)
    _check_sharing(actor=actor, agent=agent, data=data)
    _apply(agent, data)
    # Only a changed allowlist is checked: an agent whose MCP server was since removed stays editable.
    if "tools" in data:
        _check_tools(agent.tools)
    return _save(agent, creating=False)


def agent_delete(*, agent: Agent) -> None:
    # Executions keep their record (agent -> NULL, agent_slug stays): cost and history outlive the agent.
    agent.delete()
