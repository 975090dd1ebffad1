"""Waiting for a real worker's effects (rows, requests): never a timing assertion, the limit only stops a
broken test from hanging. Shared by the worker tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from apps.agents.models import AgentExecution

# Generous: a worker process on a busy 2-core machine; nothing asserts how fast it is.
LIMIT = 60.0


async def until(predicate: Callable[[], Awaitable[Any]], *, limit: float = LIMIT, every: float = 0.05) -> Any:
    """The first truthy value `predicate()` returns; AssertionError after `limit` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(every)


async def execution_row(execution_id: Any) -> AgentExecution:
    return await AgentExecution.objects.aget(pk=execution_id)


async def terminal(execution_id: Any, *, limit: float = LIMIT) -> AgentExecution:
    """The execution's row once it is completed, failed or cancelled."""

    async def done() -> AgentExecution | None:
        found = await execution_row(execution_id)
        return found if found.is_terminal else None

    return await until(done, limit=limit)
