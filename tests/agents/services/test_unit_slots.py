"""Units of database work wait for a slot (apps/agents/services/db.py): with a pool of N connections at most
N - UNIT_RESERVE run at once per process, so a burst of requests never has hundreds of threads fighting for
the GIL while they hold connections; a unit that gets no slot in time is a 503 `overloaded`, never a 500.
The health check does not wait behind them: it takes a pooled connection of its own with a short wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from django.db import connection
from django.test import AsyncClient

from apps.agents.services import db
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory

POOL = {"max_size": 4, "timeout": 0.2}


def declare_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit slots as with a pool of four (on SQLite too: no connection is opened while it is declared)."""
    options = {**connection.settings_dict.get("OPTIONS", {}), "pool": POOL}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)


async def peak_inside(slot: Callable[[], AbstractAsyncContextManager[Any]], tasks: int) -> int:
    """How many of `tasks` concurrent holders of `slot()` were inside it at once, at the most."""
    inside = peak = 0

    async def holder() -> None:
        nonlocal inside, peak
        async with slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(holder() for _ in range(tasks)))
    return peak


@pytest.fixture
def pool_of_four(monkeypatch: pytest.MonkeyPatch) -> None:
    declare_pool(monkeypatch)


async def test_at_most_the_pool_size_less_the_reserve_run_at_once(pool_of_four):
    assert await peak_inside(db.unit_slot, 12) == POOL["max_size"] - db.UNIT_RESERVE


async def test_no_slot_in_time_is_overloaded(pool_of_four):
    async with db.unit_slot(), db.unit_slot():
        with pytest.raises(db.Overloaded):
            async with db.unit_slot():
                pass
    async with db.unit_slot():  # the slots came back
        pass


async def test_without_a_pool_nothing_waits(monkeypatch):
    # Declared without a pool on every database (CI's PostgreSQL pass has one): no connection is opened here.
    options = {k: v for k, v in connection.settings_dict.get("OPTIONS", {}).items() if k != "pool"}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    assert await peak_inside(db.unit_slot, 50) == 50


@pytest.mark.django_db(transaction=True)
async def test_a_run_request_without_a_slot_is_a_503_with_retry_after(alice, monkeypatch):
    from asgiref.sync import sync_to_async

    await sync_to_async(AgentFactory)(owner=alice, agent_id="busy", preferred_platform="openai")
    token = await sync_to_async(token_for)(alice)
    client = AsyncClient(headers={"Authorization": f"Token {token}"}, raise_request_exception=False)
    declare_pool(monkeypatch)
    async with db.unit_slot(), db.unit_slot():  # every slot of this process taken
        response = await client.post(
            "/api/v1/agents/busy/execute/", {"input_data": {"task": "hi"}}, content_type="application/json"
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)


class ExhaustedPool:
    """A pool whose every connection stays busy: checkout raises the pool's own timeout."""

    def __init__(self) -> None:
        self.waited: list[float] = []

    def open(self) -> None:
        pass

    def connection(self, timeout: float):  # type: ignore[no-untyped-def]
        from psycopg_pool import PoolTimeout

        self.waited.append(timeout)
        raise PoolTimeout(f"couldn't get a connection after {timeout} sec")


@pytest.mark.django_db
def test_health_waits_briefly_for_a_busy_pool_and_says_so(monkeypatch, client):
    from apps.agents.services import health

    pool = ExhaustedPool()
    monkeypatch.setattr(health, "_pool", lambda: pool)
    response = client.get("/api/v1/health/")
    # Busy is not down: the process serves, at capacity (its excess requests get 503 `overloaded`).
    assert response.status_code == 200
    assert response.json()["database"] == {"ok": True, "detail": "busy: every pooled connection is in use"}
    # Its own short wait, not the pool's timeout (DB_POOL_TIMEOUT) behind a burst of run requests.
    assert pool.waited == [health.DATABASE_WAIT_SECONDS]
