"""Which budgets apply to a run, without a query on the hot path.

Every run needs the budgets that apply to its user and agent. Reading them was a query and a thread hop on
every run, budgets or not (0.55 ms of a streamed run's first token on PostgreSQL, bench/engine.py). Budgets
change rarely (staff edit them), so the set is kept in the "auth" cache (Redis when REDIS_URL is set, so every
server process and worker sees the same entries, each keeping copies of what it read until any process
changes them: config/near_cache.py; the process's memory otherwise) under (user, agent), each
entry stamped with the cache's *generation*: a random token replaced whenever a budget is saved or deleted.
An entry stamped with another generation is never used. The generation and the entry are read together (one
get_many: from the process's copies, or one Redis round trip, in the admission's thread).

Why no committed change is missed: the generation is replaced when a budget is saved and again after that
commits. A reader that saw an old generation stores an entry stamped old, which nobody uses once the new
token is out; a reader that saw the last one read the database after the commit. Without Redis, other
processes see a change after BUDGET_CACHE_SECONDS (as for tokens, AUTH_CACHE_SECONDS), and so does a change
that bypasses signals (a queryset .update() of budgets).

Only the definitions are cached (which budgets, their limits). What they have spent and hold is never cached:
the writes check it themselves (the admission's conditional INSERT, each attempt's hold).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.agents.models import Budget
from apps.agents.services.budget_windows import Applicable
from config.near_cache import peek_many

GENERATION = "budgets:generation"


def _cache() -> Any:
    return caches["auth"]


def _entry(user_id: Any, agent_id: Any) -> str:
    return f"budgets:{user_id}:{agent_id}"


def applicable(user_id: Any, agent_id: Any, read: Callable[[], Applicable]) -> Applicable:
    """The budgets that apply to (user_id, agent_id), from the cache when its entry is current; else
    `read()` (the database), stored for the next run. The windows of a cached entry are empty."""
    seconds = int(settings.BUDGET_CACHE_SECONDS)
    if seconds <= 0:
        return read()
    cache = _cache()
    key = _entry(user_id, agent_id)
    found = cache.get_many([GENERATION, key])
    generation = found.get(GENERATION)
    entry = found.get(key)
    if generation is not None and entry is not None and entry[0] == generation:
        return entry[1]
    if generation is None:
        cache.add(GENERATION, uuid.uuid4().hex, None)
        generation = cache.get(GENERATION)
    fresh = read()  # after reading the generation: see the module's docstring
    if generation is not None:
        definitions = Applicable(fresh.budgets, fresh.inactive, fresh.scopes, {})
        cache.set(key, (generation, definitions), seconds)
    return fresh


def peek(user_id: Any, agent_id: Any) -> Applicable | None:
    """applicable()'s cached entry if this process holds it and it is current (config/near_cache.py
    peek_many), else None (the caller reads it the usual way, in a thread)."""
    if int(settings.BUDGET_CACHE_SECONDS) <= 0:
        return None
    key = _entry(user_id, agent_id)
    found = peek_many(_cache(), [GENERATION, key])
    if found is None or found[key][0] != found[GENERATION]:
        return None
    return found[key][1]


def forget_all() -> None:
    """A new generation: every cached entry is out of date."""
    _cache().set(GENERATION, uuid.uuid4().hex, None)


@receiver(post_save, sender=Budget)
@receiver(post_delete, sender=Budget)
def _budget_changed(sender: Any, instance: Budget, **kwargs: Any) -> None:
    # Now (for this transaction's own reads) and again after the commit: a reader that took the first new
    # generation may have read the database before the commit; the second makes its entry out of date.
    forget_all()
    transaction.on_commit(forget_all)
