"""Writes from the event loop: a run's INSERT (when its admission needs no thread: services/loop_admission.py)
and its final UPDATE, sent over psycopg's async connection (services/db.py builds the statements; this module
sends them).

A unit of database work is a thread hop: the event loop hands the unit to the request's thread, that thread
waits for the GIL while the loop runs, the loop waits for it in turn, and wakes it and is woken by it. On a
run request that costs more than the statements themselves: with both of a run's units run on the loop
instead (blocking it: a measurement, never shipped) a server took 20 % less CPU per run and served 25 % more
runs (bench/ab.py, 2026-12-04; README: Performance). So the statements of a run's final write, which need
nothing from the ORM but their text and converted values (update_statement), are sent from the event loop
over psycopg's async connection: no thread, no GIL hand-over, and the loop serves other requests while
PostgreSQL answers.

The connections: a few per event loop (DB_ASYNC_WRITERS, beside the pool's DB_POOL_MAX_SIZE), kept idle
between writes as the pool keeps its own. Not psycopg_pool's AsyncConnectionPool: its pool belongs to one
loop and runs tasks on it, and a loop that ends without closing it (asyncio.run in a management command,
each test's loop) leaves its connections open until the garbage collector finds them; here a closed loop's
idle connections are closed as soon as another loop asks, without needing the dead loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model

from apps.agents.services.db import (
    Along,
    Executed,
    Overloaded,
    Statement,
    insert_statement,
    inserted_as,
    pool_options,
    pooled,
    update_statement,
)

logger = logging.getLogger(__name__)


def async_writes(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the hot path's writes go from the event loop (aupdate_row): PostgreSQL with the pool, and
    DB_ASYNC_WRITERS above 0. Elsewhere they stay units of database work (SQLite has no async driver)."""
    return int(getattr(settings, "DB_ASYNC_WRITERS", 0)) > 0 and pooled(alias)


@dataclass(slots=True)
class _Writers:
    """One event loop's connections for `alias`: the idle ones, and a slot for each that may be out."""

    slots: asyncio.Semaphore
    idle: list[tuple[Any, float]]  # (connection, when it came back)
    pid: int  # the process that opened them: a forked child (Celery prefork) must not close its parent's


_writers: dict[tuple[asyncio.AbstractEventLoop, str], _Writers] = {}
_writers_lock = threading.Lock()  # loops of different threads (the server's, the background runs') may ask


def _loop_writers(alias: str) -> _Writers:
    loop = asyncio.get_running_loop()
    writers = _writers.get((loop, alias))
    if writers is not None:
        return writers
    close_idle_writers()
    with _writers_lock:
        writers = _writers.setdefault(
            (loop, alias), _Writers(asyncio.Semaphore(int(settings.DB_ASYNC_WRITERS)), [], os.getpid())
        )
    return writers


def close_idle_writers(*, running_too: bool = False) -> None:
    """Close the idle connections of every event loop that has closed: called when a new loop asks for its
    own. A running loop's connections are its own to close; `running_too` (the test suite, before it drops
    its database) has each running loop close its idle ones, and waits for it."""
    with _writers_lock:
        for key in [key for key in _writers if key[0].is_closed()]:
            writers = _writers.pop(key)
            if writers.pid != os.getpid():
                continue  # a parent's, inherited by a fork: its sockets are the parent's to close
            for connection, _ in writers.idle:
                connection.pgconn.finish()  # the socket only: with its loop gone nothing async is left to do
        running = [(key[0], writers) for key, writers in _writers.items() if writers.pid == os.getpid()]
    if not running_too:
        return
    for loop, writers in running:
        try:
            asyncio.run_coroutine_threadsafe(_close_idle(writers), loop).result(timeout=5)
        except (RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
            logger.warning("idle connections of a running event loop not closed")


async def _close_idle(writers: _Writers) -> None:
    idle, writers.idle = writers.idle, []
    for connection, _ in idle:
        await connection.close()


def _forget_parents_writers() -> None:
    # A forked child (Celery prefork) starts with no writers and a lock nobody holds; the parent's connections
    # are the parent's (psycopg does not close them from a child either).
    global _writers_lock
    _writers_lock = threading.Lock()
    _writers.clear()


os.register_at_fork(after_in_child=_forget_parents_writers)


async def _writer(alias: str, writers: _Writers) -> Any:
    """An idle connection of this loop (checked by a round trip if it sat idle long enough to have gone
    stale, as the pool checks its own: config/db_pool.py), or a new one."""
    from psycopg_pool import AsyncConnectionPool

    from config.db_pool import CHECK_AFTER_IDLE_SECONDS

    while writers.idle:
        connection, returned = writers.idle.pop()
        if connection.closed:
            continue
        if time.monotonic() - returned <= CHECK_AFTER_IDLE_SECONDS:
            return connection
        try:
            await AsyncConnectionPool.check_connection(connection)
        except BaseException as exc:  # stale, or the write was cancelled meanwhile: never left open
            await connection.close()
            if not isinstance(exc, Exception):
                raise
            continue
        return connection
    return await _connect(alias)


async def _connect(alias: str) -> Any:
    """A new async connection with the parameters Django gives its own (database, credentials, OPTIONS, its
    type adapters), in autocommit as Django's, with the time zone and the role Django would set. Connecting
    waits at most the pool's timeout (psycopg's own default is over two minutes) unless OPTIONS says."""
    import psycopg
    from psycopg import sql

    connection = connections[alias]
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)  # Django's sync cursor class
    params.setdefault("connect_timeout", max(1, round(float(pool_options(alias)["timeout"]))))  # type: ignore[index]
    raw = await psycopg.AsyncConnection.connect(autocommit=True, **params)
    try:
        await raw.execute("SELECT set_config('TimeZone', %s, false)", [connection.timezone_name])
        role = connection.settings_dict["OPTIONS"].get("assume_role")
        if role:
            await raw.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    except BaseException:
        await raw.close()
        raise
    return raw


async def aexecute_statements(
    statements: Sequence[Statement], alias: str = DEFAULT_DB_ALIAS
) -> list[Executed]:
    """execute_statements from the event loop: the same one round trip and implicit transaction, bound and
    prepared on the server, errors as Django's. Waits at most the pool's timeout for a connection of this
    loop, then 503 `overloaded` (as an exhausted pool). Only where async_writes(alias)."""
    from psycopg.pq import TransactionStatus

    writers = _loop_writers(alias)
    slots = writers.slots
    if slots.locked():
        try:
            async with asyncio.timeout(float(pool_options(alias)["timeout"])):  # type: ignore[index]
                await slots.acquire()
        except TimeoutError:
            raise Overloaded() from None
    else:
        await slots.acquire()
    raw = None
    try:
        with connections[alias].wrap_database_errors:
            raw = await _writer(alias, writers)
            return await _apipeline(raw, statements)
    finally:
        if raw is not None:
            if not raw.closed and raw.info.transaction_status == TransactionStatus.IDLE:
                writers.idle.append((raw, time.monotonic()))
            else:  # broken, or left mid-statement by a cancellation: its state is unknown
                await raw.close()
        slots.release()


async def _apipeline(raw: Any, statements: Sequence[Statement]) -> list[Executed]:
    import psycopg

    cursors = []
    try:
        if len(statements) == 1:  # alone: see _pipeline
            cursor = psycopg.AsyncCursor(raw)
            cursors.append(cursor)
            await cursor.execute(*statements[0])
        else:
            async with raw.pipeline():
                for sql, params in statements:
                    cursor = psycopg.AsyncCursor(raw)
                    cursors.append(cursor)
                    await cursor.execute(sql, params)
        return [
            Executed(cursor.rowcount, await cursor.fetchall() if cursor.description is not None else [])
            for cursor in cursors
        ]
    finally:
        for cursor in cursors:
            await cursor.close()


async def aupdate_row(
    model: type[Model],
    pk: Any,
    values: Mapping[str, Any],
    *,
    where_in: Mapping[str, Sequence[Any]] | None = None,
    where_null: Sequence[str] = (),
    alias: str = DEFAULT_DB_ALIAS,
    along: Along | None = None,
) -> int:
    """update_row, sent from the event loop over one of its own connections (this module); only where async_writes(alias). The twin of update_row, as Django's async methods are."""
    update = update_statement(model, pk, values, where_in=where_in, where_null=where_null, alias=alias)
    before = along() if along is not None else ()
    return (await aexecute_statements([*before, update], alias))[-1].rowcount


async def ainsert_row(obj: Model, alias: str = DEFAULT_DB_ALIAS) -> None:
    """insert_row (without a condition or a write of its own), sent from the event loop: the run admission on
    the loop (services/loop_admission.py); only where async_writes(alias)."""
    await aexecute_statements([insert_statement(obj, alias)], alias)
    inserted_as(obj, alias)


async def aread_field(model: type[Model], pk: Any, name: str, alias: str = DEFAULT_DB_ALIAS) -> Any:
    """`model.objects.filter(pk=pk).values_list(name, flat=True).first()`, read from the event loop like the
    writes (no unit slot to wait for); only where async_writes(alias)."""
    connection = connections[alias]
    quote, meta = connection.ops.quote_name, model._meta
    field = meta.get_field(name)
    sql = f"SELECT {quote(field.column)} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s"
    (read,) = await aexecute_statements([(sql, [meta.pk.get_db_prep_value(pk, connection)])], alias)
    return read.rows[0][0] if read.rows else None
