"""The database under load (apps/agents/services/db.py, config/settings.py DB_POOL_*).

- On PostgreSQL, connections come from Django's pool (psycopg_pool), sized by the settings.
- A streamed run, served by the real ASGI server, holds no database connection while it waits on its
  provider: each unit of database work gives its connection back at once. On SQLite, which has no pool, the
  same release is observed by declaring the connection pooled (closing a SQLite connection is what releasing
  does there too); on PostgreSQL the real pool is used.
- A request that finds no free connection in time is a 503 `overloaded` with Retry-After, in the API's
  envelope and in OpenAI's shape on /v1, never a 500. The pool's timeout is raised from the connection
  acquisition itself, wrapped by Django exactly as a real one is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import weakref
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.test import AsyncClient, Client
from psycopg_pool import PoolTimeout

from apps.agents.models import AgentExecution, Budget, BudgetReservation, ExecutionStatus
from apps.agents.services import db
from tests.agents.api.conftest import client_for, token_for
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test, or PostgreSQL
    refuses to drop the test database at the end ("being accessed by other users")."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def released_per_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the real pool. SQLite: no pool, so the connection is declared pooled (see module doc)."""
    if connection.vendor != "postgresql":
        monkeypatch.setattr(db, "pooled", lambda alias="default": True)


class ConnectionHolds:
    """Samples, every 10 ms, which connections opened by other threads (the server's request threads) are
    open, from the moment it is installed; `longest()` is the longest time one stayed open without a break."""

    def __init__(self) -> None:
        self._wrappers: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()
        self._main = threading.get_ident()
        self._open_since: dict[int, float] = {}
        self.opened = 0
        self.longest_hold = 0.0

    def __call__(self, sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
        if threading.get_ident() != self._main:
            self._wrappers.add(connection)
            self.opened += 1

    def sample(self) -> None:
        now = time.monotonic()
        for wrapper in list(self._wrappers):
            key = id(wrapper)
            if wrapper.connection is None:
                self._open_since.pop(key, None)
                continue
            since = self._open_since.setdefault(key, now)
            self.longest_hold = max(self.longest_hold, now - since)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.01)


@pytest.fixture
def connection_holds():
    """Installed by the test once its own setup is done (its setup thread keeps a connection)."""
    probe = ConnectionHolds()
    yield lambda: connection_created.connect(probe, weak=False) or probe
    connection_created.disconnect(probe)


def test_postgresql_connections_come_from_the_pool(settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no connection pool: this checks PostgreSQL's, in CI's PostgreSQL pass")
    options = settings.DATABASES["default"]["OPTIONS"]["pool"]
    assert settings.DATABASES["default"]["CONN_MAX_AGE"] == 0  # Django refuses a pool otherwise
    connection.ensure_connection()
    pool = connection.pool
    assert pool is not None and connection.connection._pool is pool
    assert (pool.min_size, pool.max_size, pool.timeout) == (
        options["min_size"],
        settings.DB_POOL_MAX_SIZE,
        options["timeout"],
    )
    assert db.pooled()


@pytest.mark.parametrize("budgeted", [False, True], ids=["no budget", "under a budget"])
async def test_a_streamed_run_holds_no_connection_while_it_waits_on_the_provider(
    live_server_url,
    fake_registry,
    fake_openai,
    alice,
    settings,
    released_per_unit,
    connection_holds,
    budgeted,
):
    settings.EXECUTION_HEARTBEAT_SECONDS = 0.2  # the watcher polls and beats several times meanwhile
    agent = await sync_to_async(AgentFactory)(
        owner=alice, agent_id="slow", preferred_platform="openai", max_retries=0
    )
    if budgeted:
        # The hold before the provider call is a unit of database work like the others: its connection goes
        # back at once, not when the request ends (held, 50 budgeted runs took the whole pool and the
        # admissions waiting for it held the unit slots that the runs' final writes needed).
        await Budget.objects.acreate(
            scope="agent", agent=agent, period="day", limit_usd=Decimal("5"), max_concurrent=5
        )
    token = await sync_to_async(token_for)(alice)
    words = "one two three four five six seven eight"
    fake_openai.reply(Reply(text=words, chunk_delay=0.4))  # the run waits 8 x 0.4 s on its provider
    holds = connection_holds()
    sampler = asyncio.create_task(holds.run())

    lines: list[str] = []
    try:
        async with (
            httpx.AsyncClient(base_url=live_server_url, timeout=30) as client,
            client.stream(
                "POST",
                "/api/v1/agents/slow/execute/",
                json={"input_data": {"task": "hi"}, "stream": True},
                headers={"Authorization": f"Token {token}"},
            ) as response,
        ):
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
    finally:
        sampler.cancel()

    deltas = [
        json.loads(data.removeprefix("data: "))["text"]
        for event, data in itertools.pairwise(lines)
        if event == "event: output.delta"
    ]
    assert "".join(deltas) == words
    assert holds.opened >= 2  # admission and the watcher's polls did reach the database
    # Held, the request's connection would stay open for the whole 3.2 s stream; released, for one unit
    # of work at a time (milliseconds; 1 s leaves room for a loaded machine).
    assert holds.longest_hold < 1.0, holds.longest_hold
    execution = await AgentExecution.objects.aget(agent__agent_id="slow")
    assert (execution.status, execution.output) == (ExecutionStatus.COMPLETED, words)
    if budgeted:
        assert not await BudgetReservation.objects.filter(execution=execution).aexists()  # settled
        assert execution.output_tokens > 0


@pytest.fixture
def pool_exhausted(monkeypatch: pytest.MonkeyPatch):
    """Every connection acquisition times out as the pool's does (PoolTimeout, wrapped by Django's error
    wrapper like a real one: django.db.Error on PostgreSQL). Yields a switch, so a test can set up first."""

    def exhausted(self: BaseDatabaseWrapper) -> None:
        with self.wrap_database_errors:
            raise PoolTimeout("couldn't get a connection after 10.00 sec")

    def switch_on() -> None:
        connection.close()  # the test's own thread must acquire too
        monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", exhausted)

    return switch_on


def test_an_exhausted_pool_is_a_503_with_retry_after_in_the_envelope(alice, pool_exhausted):
    client = client_for(alice)
    pool_exhausted()

    response = client.get("/api/v1/agents/")

    assert response.status_code == 503
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)
    assert response.json()["error"]["code"] == "overloaded"
    assert set(response.json()) == {"error"}


async def test_an_exhausted_pool_on_v1_is_a_503_in_openai_shape(alice, pool_exhausted):
    token = await sync_to_async(token_for)(alice)
    await sync_to_async(pool_exhausted)()

    response = await AsyncClient().post(
        "/v1/chat/completions",
        {"model": "anything", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 503
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)
    assert response.json()["error"]["code"] == "overloaded"
    assert response.json()["error"]["type"] == "server_error"


def test_other_database_errors_stay_500(alice, monkeypatch):
    """Only the pool's timeout means "busy, come back": a broken database is still a server error."""
    from django.db import OperationalError

    client = client_for(alice)
    connection.close()

    def broken(self: BaseDatabaseWrapper) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", broken)

    response = client.get("/api/v1/agents/")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "server_error"
    assert "Retry-After" not in response


def test_an_exhausted_pool_outside_the_api_views_is_a_503_too(pool_exhausted):
    """Django's own error path (handler500): here the admin loading the session of a logged-in cookie."""
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "a" * 32
    pool_exhausted()

    response = client.get("/admin/")

    assert response.status_code == 503
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)
    assert b"overloaded" in response.content
