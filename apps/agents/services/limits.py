"""Deployment limits on what an agent may ask of a provider (settings, README "Budgets and limits"):

- MODEL_ALLOWLIST: the models a (non-staff) user may pick per platform;
- MAX_OUTPUT_TOKENS: the largest max_tokens for anyone;
- NON_STAFF_MAX_RETRIES, NON_STAFF_MAX_TIMEOUT_SECONDS: ceilings for agents owned by non-staff users.

Checked when an agent is written (apps/agents/services/agents.py) and again when it runs
(execution_prepare.py), since settings may have tightened after the agent was saved. 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from apps.agents.errors import ApplicationError


def effective_platform(preferred: str) -> str:
    if preferred:
        return preferred
    if settings.DEFAULT_PLATFORM:
        return str(settings.DEFAULT_PLATFORM)
    order = list(settings.PLATFORM_FALLBACK_ORDER or ())
    return order[0] if order else ""


def limit_errors(agent: Any, *, staff: bool) -> dict[str, list[str]]:
    """{field: [why]} for every deployment limit `agent` (an Agent or anything with its fields) breaks."""
    errors: dict[str, list[str]] = {}
    cap = int(settings.MAX_OUTPUT_TOKENS)
    if agent.max_tokens is not None and agent.max_tokens > cap:
        errors["max_tokens"] = [f"at most {cap} on this deployment (MAX_OUTPUT_TOKENS)"]
    if staff:
        return errors
    allowlist = settings.MODEL_ALLOWLIST or {}
    platform = effective_platform(agent.preferred_platform)
    allowed = allowlist.get(platform)
    if agent.model and allowed is not None and agent.model not in allowed:
        shown = ", ".join(allowed) or "none"
        errors["model"] = [f"{platform} models allowed on this deployment: {shown}"]
    max_retries = int(settings.NON_STAFF_MAX_RETRIES)
    if agent.max_retries > max_retries:
        errors["max_retries"] = [f"at most {max_retries} on this deployment (NON_STAFF_MAX_RETRIES)"]
    max_timeout = int(settings.NON_STAFF_MAX_TIMEOUT_SECONDS)
    if agent.timeout_seconds > max_timeout:
        errors["timeout_seconds"] = [
            f"at most {max_timeout} on this deployment (NON_STAFF_MAX_TIMEOUT_SECONDS)"
        ]
    return errors


def limits_error(errors: dict[str, list[str]]) -> ApplicationError:
    names = ", ".join(sorted(errors))
    return ApplicationError(
        f"The agent exceeds this deployment's limits: {names}.", code="limit_exceeded", fields=errors
    )


def check_agent_limits(agent: Any, *, staff: bool) -> None:
    errors = limit_errors(agent, staff=staff)
    if errors:
        raise limits_error(errors)


def check_run_limits(agent: Any) -> None:
    """At run time. The owner is read only when a limit is broken (one query, rarely): staff agents may
    exceed the non-staff ceilings."""
    if not limit_errors(agent, staff=False):
        return
    staff = False
    if agent.owner_id is not None:
        from django.contrib.auth import get_user_model

        staff = get_user_model().objects.filter(pk=agent.owner_id, is_staff=True).exists()
    check_agent_limits(agent, staff=staff)
