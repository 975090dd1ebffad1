"""The pool's connection check (config/db_pool.py): a round trip only for a connection left idle, never for
one that answered a moment ago; a stale idle connection is still replaced before anyone gets it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from psycopg_pool import ConnectionPool

from config import db_pool

pytestmark = pytest.mark.django_db(transaction=True)


class FakeConnection:
    """What ConnectionPool.check_connection uses of a psycopg connection."""

    def __init__(self, *, broken: bool = False) -> None:
        self.autocommit = True
        self.broken = broken
        self.executed: list[str] = []

    def execute(self, query: str) -> None:
        self.executed.append(query)
        if self.broken:
            raise OSError("server closed the connection unexpectedly")


def test_a_connection_back_a_moment_ago_is_handed_out_without_a_round_trip(monkeypatch):
    fake = FakeConnection(broken=True)
    db_pool.note_return(fake)
    db_pool.check_if_idle(fake)
    assert fake.executed == []


def test_an_idle_or_new_connection_is_checked_and_a_dead_one_refused(monkeypatch):
    fresh = FakeConnection()
    db_pool.check_if_idle(fresh)  # never returned yet: just opened, or handed over by the pool's filler
    assert fresh.executed == [""]
    dead = FakeConnection(broken=True)
    db_pool.note_return(dead)
    monkeypatch.setattr(db_pool, "CHECK_AFTER_IDLE_SECONDS", -1.0)
    with pytest.raises(OSError):
        db_pool.check_if_idle(dead)  # the pool then discards it and hands out another


def test_the_pool_django_builds_uses_the_idle_check_and_reuses_a_warm_connection(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no connection pool: this checks PostgreSQL's, in CI's PostgreSQL pass")
    checks: list[object] = []
    real = ConnectionPool.check_connection
    monkeypatch.setattr(ConnectionPool, "check_connection", lambda conn: checks.append(conn) or real(conn))

    def unit() -> object:
        # A unit of work in a thread of its own, as services/db.py runs them: connect, query, give back.
        found: list[object] = []

        def work() -> None:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
            found.append(connections["default"].connection)
            connections["default"].close()  # pooled: back to the pool

        thread = threading.Thread(target=work, name="unit")
        thread.start()
        thread.join()
        return found[0]

    unit()
    pool = connections["default"].pool
    assert pool._check is db_pool.check_if_idle
    # Taken back by the thread that gives it, not queued for the pool's worker thread (as a `reset` callback
    # would have it): no hand-over between threads per unit, and the next unit can have it at once.
    takers: list[str] = []
    take_back = pool._return_connection
    monkeypatch.setattr(
        pool,
        "_return_connection",
        lambda conn, **kw: takers.append(threading.current_thread().name) or take_back(conn, **kw),
    )
    for _ in range(pool.max_size):  # every connection in the pool has now been used and given back
        unit()
    assert takers == ["unit"] * pool.max_size
    monkeypatch.setattr(db_pool, "CHECK_AFTER_IDLE_SECONDS", 3600.0)
    before = len(checks)
    for _ in range(pool.max_size):
        unit()
    assert len(checks) == before, "a connection given back a moment ago was checked again"
    monkeypatch.setattr(db_pool, "CHECK_AFTER_IDLE_SECONDS", -1.0)  # as if each had sat idle
    unit()
    assert len(checks) == before + 1
