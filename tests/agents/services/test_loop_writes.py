"""Writes from the event loop (services/loop_writes.py): a run's final UPDATE sent over psycopg's async connection, on
PostgreSQL with the pool, instead of a unit of database work in a thread. Elsewhere (SQLite, DB_ASYNC_WRITERS=0)
the write stays a unit; both give the same row.

The PostgreSQL tests are skipped on SQLite, which has no async driver; `.ci/run` runs them in its PostgreSQL
pass."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection

from apps.agents.errors import IllegalTransition
from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services import db, loop_writes
from apps.agents.services.execution_engine import execution_engine
from apps.agents.services.state_manager import StateManager, _units, state_manager
from tests.factories import AgentFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_writes_only")]

INSERT = ("INSERT INTO auth_group (name) VALUES (%s)", ["writers"])


def in_a_unit(fn):
    """`fn` in a thread whose connection goes back to the pool at once (services/db.py), so that no
    connection of this test is left open when the test database is dropped."""
    return db.db_unit(fn)


def _group_names() -> list[str]:
    return list(Group.objects.values_list("name", flat=True))


@pytest.fixture
def no_unit_transition(monkeypatch):
    """A transition written as a unit of database work fails the test: it must go from the loop."""

    def unit(*args, **kwargs):
        raise AssertionError("the final write went through a thread (a unit of database work)")

    monkeypatch.setattr(_units, "transition", unit)


def _backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] == 1


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def _row(execution_id):
    row = AgentExecution.objects.get(pk=execution_id)
    attempts = [{k: v for k, v in a.items() if k != "latency_ms"} for a in row.attempts]
    return (
        row.status,
        row.output,
        row.input_tokens,
        row.output_tokens,
        row.cost,
        row.platform_used,
        attempts,
    )


async def test_a_runs_final_write_goes_from_the_loop_and_records_what_the_unit_records(
    no_unit_transition, fake_registry, settings, monkeypatch
):
    user = await in_a_unit(UserFactory)()
    agent = await in_a_unit(AgentFactory)(owner=user)
    from_loop = await execution_engine.execute_agent(agent, {"task": "hi"}, user)
    assert from_loop.success
    # The same run written as a unit (the path of SQLite and DB_ASYNC_WRITERS=0): the same row.
    settings.DB_ASYNC_WRITERS = 0
    monkeypatch.setattr(_units, "transition", db.db_unit(StateManager.transition))
    as_unit = await execution_engine.execute_agent(agent, {"task": "hi"}, user)
    loop_row = await in_a_unit(_row)(from_loop.execution_id)
    unit_row = await in_a_unit(_row)(as_unit.execution_id)
    assert loop_row[0] == ExecutionStatus.COMPLETED
    assert loop_row == unit_row
    assert from_loop.execution_time is not None


async def test_a_lost_transition_is_still_reported_as_the_rows_outcome(fake_registry, monkeypatch):
    user = await in_a_unit(UserFactory)()
    agent = await in_a_unit(AgentFactory)(owner=user)
    result = await execution_engine.execute_agent(agent, {"task": "hi"}, user)
    row = await in_a_unit(AgentExecution.objects.get)(pk=result.execution_id)

    def no_slot(alias="default"):
        raise db.Overloaded()  # every unit slot taken: the status must not wait for one

    monkeypatch.setattr(db, "unit_slot", no_slot)
    with pytest.raises(IllegalTransition) as lost:
        await state_manager.acomplete_execution(row, output={"again": True})
    assert lost.value.current == ExecutionStatus.COMPLETED  # read back for the error, as the unit does


async def test_statements_from_the_loop_are_one_transaction_and_raise_djangos_errors():
    renamed = ("UPDATE auth_group SET name = %s WHERE name = %s", ["editors", "writers"])
    inserted, updated = await loop_writes.aexecute_statements([INSERT, renamed])
    assert (inserted.rowcount, updated.rowcount) == (1, 1)
    with pytest.raises(IntegrityError):  # Django's, as the sync path raises it
        await loop_writes.aexecute_statements(
            [INSERT, ("INSERT INTO auth_group (name) VALUES (%s)", ["editors"])]
        )
    assert await in_a_unit(_group_names)() == ["editors"]  # the first INSERT was rolled back
    (again,) = await loop_writes.aexecute_statements([INSERT])  # and the connection went back usable
    assert again.rowcount == 1
    with pytest.raises(IntegrityError):  # a lone statement (sent without a pipeline) alike
        await loop_writes.aexecute_statements([INSERT])
    (counted,) = await loop_writes.aexecute_statements([("SELECT count(*) FROM auth_group", [])])
    assert counted.rows == [(2,)]


async def test_a_connection_idle_long_enough_to_have_gone_stale_is_checked_and_replaced(monkeypatch):
    await loop_writes.aexecute_statements([INSERT])
    writers = loop_writes._loop_writers("default")
    ((idle, _),) = writers.idle
    await in_a_unit(_terminate)(idle.info.backend_pid)
    monkeypatch.setattr("config.db_pool.CHECK_AFTER_IDLE_SECONDS", 0.0)  # it has been idle "too long"
    await asyncio.sleep(0.05)
    renamed = await loop_writes.aexecute_statements([("UPDATE auth_group SET name = %s", ["checked"])])
    assert renamed[0].rowcount == 1  # written over a new connection, not lost to the dead one
    assert idle.closed


async def test_a_recently_used_connection_is_handed_out_without_a_check(monkeypatch):
    await loop_writes.aexecute_statements([INSERT])
    ((idle, _),) = loop_writes._loop_writers("default").idle
    checks = []

    async def check(conn):
        checks.append(conn)

    monkeypatch.setattr("psycopg_pool.AsyncConnectionPool.check_connection", check)
    await loop_writes.aexecute_statements([("SELECT 1", [])])
    assert checks == []
    assert loop_writes._loop_writers("default").idle[0][0] is idle  # the same connection, reused


def test_a_closed_loops_connections_are_closed_when_another_loop_asks():
    async def write() -> int:
        await loop_writes.aexecute_statements([("SELECT 1", [])])
        return loop_writes._loop_writers("default").idle[0][0].info.backend_pid

    first = asyncio.run(write())  # a management command's asyncio.run, a test's loop: gone after this
    assert _backend_alive(first)
    second = asyncio.run(write())
    assert second != first
    deadline = time.monotonic() + 5
    while _backend_alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _backend_alive(first)


async def test_with_every_connection_out_a_write_waits_the_pool_timeout_then_is_overloaded(
    settings, monkeypatch
):
    settings.DB_ASYNC_WRITERS = 1
    monkeypatch.setitem(settings.DATABASES["default"]["OPTIONS"]["pool"], "timeout", 0.2)
    # This loop's writers, one slot, taken by a write that is still running.
    loop_writes._writers.pop((asyncio.get_running_loop(), "default"), None)
    slow = asyncio.ensure_future(loop_writes.aexecute_statements([("SELECT pg_sleep(1)", [])]))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(db.Overloaded) as refused:
        await loop_writes.aexecute_statements([("SELECT 1", [])])
    assert time.monotonic() - started >= 0.2
    assert refused.value.status == 503 and db.pool_exhausted(refused.value)
    await slow
    await loop_writes.aexecute_statements([("SELECT 1", [])])  # the slot came back


def _running(query: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s", [query])
        return cursor.fetchone()[0]


async def test_a_write_cancelled_midway_is_stopped_on_the_server_and_its_connection_left_usable():
    await loop_writes.aexecute_statements([("SELECT 1", [])])
    writers = loop_writes._loop_writers("default")
    slow = "SELECT pg_sleep(5) /* cancelled */"
    write = asyncio.ensure_future(loop_writes.aexecute_statements([(slow, [])]))
    await asyncio.sleep(0.3)
    assert await in_a_unit(_running)(slow) == 1
    started = time.monotonic()
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert time.monotonic() - started < 2  # psycopg cancels the statement on the server, not waiting 5 s
    assert await in_a_unit(_running)(slow) == 0
    # Back in the idle list only in a known state (idle, no transaction open), else closed.
    for connection_, _ in writers.idle:
        assert not connection_.closed and connection_.info.transaction_status == 0  # IDLE
    (after,) = await loop_writes.aexecute_statements([("SELECT 1", [])])
    assert after.rows == [(1,)]


def test_connections_inherited_by_a_fork_are_left_to_the_parent():
    async def write() -> loop_writes._Writers:
        await loop_writes.aexecute_statements([("SELECT 1", [])])
        return loop_writes._loop_writers("default")

    writers = asyncio.run(write())
    ((inherited, _),) = writers.idle
    writers.pid += 1  # as a Celery prefork child sees its parent's entry
    try:
        loop_writes.close_idle_writers()  # what a child's first loop does when it asks for its own
        assert not inherited.closed  # the parent's socket was not touched: the parent still uses it
        assert all(other is not writers for other in loop_writes._writers.values())  # and the child forgot it
    finally:
        inherited.pgconn.finish()
