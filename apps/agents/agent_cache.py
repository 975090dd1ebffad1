"""The agent to run, by slug or UUID, without a query on the hot path (POST .../execute/, /v1).

Looking the agent up was the costliest read of a run request (an ORM query with its join, about a tenth of
the server's CPU per request in `bench/api.py --profile`). The row is kept in the "auth" cache (Redis when
REDIS_URL is set, so every server process sees the same entries and the same invalidations, each keeping
copies of what it read until any process changes them: config/near_cache.py; the process's memory otherwise)
for AGENT_CACHE_SECONDS, under the key the request used. Visibility is decided on the cached row with the
same rules as the selector (`agents_visible_to`), so a cached agent is never shown to someone the query would
have refused.

Entries are dropped when the agent is saved or deleted (now, and again when the transaction commits, so a
request running meanwhile cannot put the old row back for good), under its UUID, its slug and its slug before
a rename. A change that bypasses signals (a queryset .update()) is seen after AGENT_CACHE_SECONDS at most.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from apps.agents.models import Agent
from apps.agents.selectors import agent_key_filter, parse_uuid
from config.near_cache import peek_many

PREFIX = "agent:"


def _cache() -> Any:
    return caches["auth"]


def _cache_key(key: str) -> str:
    pk = parse_uuid(key)
    return f"{PREFIX}{pk}" if pk is not None else f"{PREFIX}slug:{key}"


def visible_to(agent: Agent, user: Any) -> bool:
    """`agents_visible_to` for one row: staff see all; others their own and active shared ones."""
    if getattr(user, "is_staff", False):
        return True
    mine = agent.owner_id is not None and agent.owner_id == getattr(user, "pk", None)
    return mine or (agent.is_shared and agent.is_active)


def agent_get_runnable(*, user: Any, key: str) -> Agent | None:
    """The agent `key` names if `user` may see it (None for "no such agent" and "not yours" alike), from the
    cache when it is there. Without its owner loaded: running needs only the owner's id."""
    seconds = settings.AGENT_CACHE_SECONDS
    where = agent_key_filter(key)
    if where is None:
        return None
    entry = _cache_key(key)
    agent = _cache().get(entry) if seconds else None
    if agent is None:
        agent = Agent.objects.filter(where).first()
        if agent is None:
            return None  # never cached: the agent may be created the next moment
        if seconds:
            _cache().set(entry, agent, seconds)
    return agent if visible_to(agent, user) else None


def agent_in_memory(*, user: Any, key: str) -> tuple[bool, Agent | None]:
    """agent_get_runnable answered from this process's memory only (config/near_cache.py peek_many):
    (True, the agent or None as agent_get_runnable would give it), or (False, None) when that needs I/O."""
    if not settings.AGENT_CACHE_SECONDS or agent_key_filter(key) is None:
        return False, None
    entry = _cache_key(key)
    found = peek_many(_cache(), [entry])
    if found is None:
        return False, None
    agent = found[entry]
    return True, agent if visible_to(agent, user) else None


def forget(*keys: str) -> None:
    entries = [_cache_key(key) for key in keys if key]
    _cache().delete_many(entries)
    transaction.on_commit(lambda: _cache().delete_many(entries))


@receiver(pre_save, sender=Agent)
def _remember_old_slug(sender: Any, instance: Agent, raw: bool = False, **kwargs: Any) -> None:
    # A rename must drop the entry under the old slug too; saves are rare, the extra read is cheap.
    if raw or instance._state.adding:
        return
    instance._slug_before_save = (
        Agent.objects.filter(pk=instance.pk).values_list("agent_id", flat=True).first()
    )


@receiver(post_save, sender=Agent)
@receiver(post_delete, sender=Agent)
def _agent_changed(sender: Any, instance: Agent, **kwargs: Any) -> None:
    forget(str(instance.pk), instance.agent_id, getattr(instance, "_slug_before_save", None) or "")
