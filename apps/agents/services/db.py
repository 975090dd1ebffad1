"""Units of database work that give their connection back at once (README: Scaling out).

Under ASGI every `sync_to_async` call of a request runs in that request's one thread, and Django keeps the
thread's connection open until the request ends (`request_finished`). A streamed or synchronous run lasts as
long as its provider takes, so without this each open run held a PostgreSQL connection for 30 s of waiting:
`max_connections` (100) was the ceiling on concurrent runs, and the 101st got a 500.

With the connection pool (config/settings.py, DB_POOL_*), closing a connection hands it back to the pool,
which costs microseconds. So each unit of a run's database work (admission, heartbeat, the final write, a
poll of the row) runs as `db_unit(fn)`: one thread hop, then the thread's connection goes back to the pool.
Without the pool (SQLite, or DB_POOL_MAX_SIZE=0) closing would mean reconnecting for every unit, so the
connection is kept as before. Inside a transaction (a caller's `atomic()`, a test's) it is never closed.

Units also wait for a slot: at most the pool's size less UNIT_RESERVE run at once per process (a run
request's DRF half, api/deferred.py, counts as one). Each unit runs in its request's own thread, so a burst of
500 requests started 500 threads that fought for the GIL while holding pool connections: connection holders
got a slice rarely, the pool ran dry (503s to requests the server could serve), and the event loop, one thread
among 500, answered health checks seconds late. Waiting for a slot costs nothing (an asyncio queue), holds no
connection, and leaves connections free for what is not queued (health, reads). A unit that gets no slot
within the pool's timeout is the same 503 `overloaded` as an exhausted pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.utils import CursorDebugWrapper
from django.db.models import Model, QuerySet

from apps.agents.errors import ApplicationError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def pool_options(alias: str = DEFAULT_DB_ALIAS) -> Mapping[str, Any] | None:
    """OPTIONS["pool"] of `alias` (PostgreSQL with a connection pool), or None.

    Read from the settings (the dict every connection of `alias` shares, test database name included), not
    from `connections[alias]`: on the event loop that builds a DatabaseWrapper for the request's context
    only to read its settings, a tenth of a millisecond per slot (`bench/api.py --profile`)."""
    return connections.settings[alias].get("OPTIONS", {}).get("pool") or None


def pooled(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether `alias` uses a connection pool (PostgreSQL with OPTIONS["pool"])."""
    return pool_options(alias) is not None


def connections_end_with_requests() -> bool:
    """Whether no database keeps a connection from one request to the next (CONN_MAX_AGE 0, the pool
    included): then the connection checks at a request's start find nothing to do (config/asgi.py)."""
    return all(database.get("CONN_MAX_AGE", 0) == 0 for database in settings.DATABASES.values())


def release_connection(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Give this thread's pooled connection back to the pool, unless a transaction is open on it."""
    connection = connections[alias]
    if connection.connection is not None and not connection.in_atomic_block and pooled(alias):
        connection.close()


#: Pooled connections left for work that does not wait for a unit slot (health, plain reads, the admin).
UNIT_RESERVE = 2

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def unit_slot(alias: str = DEFAULT_DB_ALIAS) -> AsyncIterator[None]:
    """One of the process's unit slots (see the module docstring); none needed without a pool."""
    pool = pool_options(alias)
    if not pool:
        yield
        return
    async with _slot(_slots, max(1, int(pool["max_size"]) - UNIT_RESERVE), float(pool["timeout"])):
        yield


_admissions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

#: Seconds a run request waits for an admission slot without a pool (with one: DB_POOL_TIMEOUT).
ADMISSION_TIMEOUT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def admission_slot(alias: str = DEFAULT_DB_ALIAS) -> AsyncIterator[None]:
    """One of the process's RUN_ADMISSIONS slots, held by a run request's DRF half (api/deferred.py).

    Fewer than the unit slots: admitting a run is CPU work (authentication, throttles, validation, the
    agent) in a thread of its own, and with 18 of those at once in a burst the event loop and the threads of
    short requests (health, a plain GET) waited their turn for the GIL behind them for seconds. Queued here
    they wait on the loop, holding nothing; past the timeout the answer is the 503 `overloaded`."""
    size = int(getattr(settings, "RUN_ADMISSIONS", 0))
    if size <= 0:
        yield
        return
    pool = pool_options(alias)
    async with _slot(_admissions, size, float(pool["timeout"]) if pool else ADMISSION_TIMEOUT_SECONDS):
        yield


@contextlib.asynccontextmanager
async def _slot(
    semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore],
    size: int,
    wait: float,
) -> AsyncIterator[None]:
    """A slot of this event loop's semaphore of `size` in `semaphores`, waited for at most `wait` seconds."""
    loop = asyncio.get_running_loop()
    slots = semaphores.get(loop)
    if slots is None:
        slots = semaphores[loop] = asyncio.Semaphore(size)
    if slots.locked():  # taken, or others wait: queue behind them for at most `wait` seconds
        try:
            async with asyncio.timeout(wait):
                await slots.acquire()
        except TimeoutError:
            raise Overloaded() from None
    else:  # free and nobody waiting: taken at once, without arming and cancelling a timer (7 against 1 us)
        await slots.acquire()
    try:
        yield
    finally:
        slots.release()


def db_unit(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` (sync, ORM work) as an awaitable that runs in the request's thread (one hop, like Django's own
    async ORM methods) once it has a unit slot, and releases the connection when it returns or raises."""

    @functools.wraps(fn)
    def unit(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            release_connection()

    hop = sync_to_async(unit)

    @functools.wraps(fn)
    async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        async with unit_slot():
            return await hop(*args, **kwargs)

    return limited


#: Orphans being given up (a task nobody awaits must be referenced until it ends).
_giving_up: set[asyncio.Task[Any]] = set()


async def kept_if_cancelled(work: Awaitable[R], give_up: Callable[[R], Awaitable[object] | None]) -> R:
    """Await `work`, a unit whose result its caller takes over (a run's row, written already `running` or
    `pending`). If the caller is cancelled meanwhile (its client went away), the unit is left to finish (its
    thread cannot be stopped anyway) and its result handed to `give_up(result)`, which undoes it (records the
    row cancelled), instead of being lost with the cancelled await: asgiref discards a cancelled call's
    result, and a row nobody runs stayed `running`, holding its budget room, until the reaper ended it."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_give_up, give_up))
        raise


def _give_up(give_up: Callable[[Any], Awaitable[object] | None], work: asyncio.Future[Any]) -> None:
    if work.cancelled() or work.exception() is not None:
        return  # nothing was written (a refusal, an error)
    undo = give_up(work.result())
    if undo is None:
        return
    task = asyncio.ensure_future(undo)
    _giving_up.add(task)
    task.add_done_callback(_given_up)


def _given_up(task: asyncio.Task[Any]) -> None:
    _giving_up.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("giving up an orphaned unit's result failed", exc_info=task.exception())


def _first(queryset: QuerySet[Any]) -> Any:
    return queryset.first()


_afirst = db_unit(_first)


async def afirst(queryset: QuerySet[Any]) -> Model | Any | None:
    """`await queryset.afirst()` as a unit of its own: for reads repeated while waiting (polls)."""
    return await _afirst(queryset)


# ------------------------------------------------------------------------------------------- lean writes
# The hot path's two writes (an execution's INSERT and its final conditional UPDATE) without the ORM's query
# building, which costs more CPU than PostgreSQL takes to run them (bench/engine.py: about 1 ms of the 1.4 ms
# the two cost a run, against 0.35 ms in hand-written SQL). The values still go through each field's own
# pre_save / get_db_prep_save (auto_now, JSON, UUID, Decimal, time zones), exactly as save() and update()
# convert them; only the statement's text is built here, once per shape. No signals are sent and no field may
# need a placeholder of its own (binary, geometry): for models like AgentExecution only. On PostgreSQL they are
# bound and prepared on the server (execute_statements): about 0.3 ms less per run than bound by the client.


#: A statement and its parameters.
Statement = tuple[str, Sequence[Any]]

#: A condition (SQL, parameters) an INSERT is made on: evaluated by the database in the INSERT's statement.
Condition = tuple[str, Sequence[Any]]


#: Writes a model instance's INSERT statement (SQL, parameters) with whatever must go in its round trip;
#: whether it wrote the row. What else it writes must itself depend on the row being there: on PostgreSQL it
#: runs either way.
Write = Callable[[Model, tuple[str, Sequence[Any]]], bool]


def insert_row(
    obj: Model, alias: str = DEFAULT_DB_ALIAS, *, only_if: Condition | None = None, write: Write | None = None
) -> bool:
    """INSERT `obj` with every concrete column, as `obj.save(force_insert=True)` would write it; with
    `only_if`, only if that condition holds (`INSERT ... SELECT ... WHERE`, the same one statement); with
    `write`, written by it (services/budget_ledger.py: the run's first hold in the same round trip).
    Whether the row was written."""
    statement = insert_statement(obj, alias, only_if=only_if)
    if write is not None:
        written = write(obj, statement)
    else:
        (inserted,) = execute_statements([statement], alias)
        written = only_if is None or inserted.rowcount == 1
    if written:
        inserted_as(obj, alias)
    return written


def insert_statement(
    obj: Model, alias: str = DEFAULT_DB_ALIAS, *, only_if: Condition | None = None
) -> Statement:
    """insert_row's statement. The values are converted by their fields (pre_save, get_db_prep_save) with
    `connections[alias]` only for its operations: nothing connects, so this may run on the event loop."""
    connection = connections[alias]
    fields = obj._meta.local_concrete_fields
    values = [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]
    condition, condition_params = only_if if only_if is not None else ("", ())
    return _insert_sql(type(obj), alias, bool(condition)) + condition, [*values, *condition_params]


def inserted_as(obj: Model, alias: str) -> None:
    """`obj` as save() leaves an instance it inserted: saved, in `alias`."""
    obj._state.adding = False
    obj._state.db = alias


#: Statements (SQL, parameters) for update_row to write with its UPDATE, made where the write is made (its
#: unit's thread, or the event loop: services/loop_writes.py): CPU only, never a query.
Along = Callable[[], Sequence[tuple[str, Sequence[Any]]]]


def update_row(
    model: type[Model],
    pk: Any,
    values: Mapping[str, Any],
    *,
    where_in: Mapping[str, Sequence[Any]] | None = None,
    where_null: Sequence[str] = (),
    alias: str = DEFAULT_DB_ALIAS,
    along: Along | None = None,
) -> int:
    """`model.objects.filter(pk=pk, <name>__in=..., <name>__isnull=True).update(**values)`: the rows changed.

    `along` gives statements (SQL, parameters) to write before the UPDATE in the same transaction, committed
    with it even when it changes no row: execute_statements (on PostgreSQL in the same round trip)."""
    update = update_statement(model, pk, values, where_in=where_in, where_null=where_null, alias=alias)
    before = along() if along is not None else ()
    return execute_statements([*before, update], alias)[-1].rowcount


def update_statement(
    model: type[Model],
    pk: Any,
    values: Mapping[str, Any],
    *,
    where_in: Mapping[str, Sequence[Any]] | None = None,
    where_null: Sequence[str] = (),
    alias: str = DEFAULT_DB_ALIAS,
) -> Statement:
    """update_row's UPDATE statement. The values are converted by their fields (get_db_prep_save) with
    `connections[alias]` only for its operations: nothing connects, so this may run on the event loop."""
    connection = connections[alias]
    meta = model._meta
    sets = tuple(values)
    params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params.append(meta.pk.get_db_prep_value(pk, connection))
    where_in = where_in or {}
    for name, allowed in where_in.items():
        field = meta.get_field(name)
        params.extend(field.get_db_prep_value(value, connection) for value in allowed)
    shape = (sets, tuple((name, len(allowed)) for name, allowed in where_in.items()), tuple(where_null))
    return _update_sql(model, alias, *shape), params


@dataclass(frozen=True, slots=True)
class Executed:
    """What one statement of execute_statements did: the rows it changed, and those it returned."""

    rowcount: int
    rows: list[tuple[Any, ...]]


def execute_statements(statements: Sequence[Statement], alias: str = DEFAULT_DB_ALIAS) -> list[Executed]:
    """Run `statements` in order, in one transaction (the caller's, if one is open): all of them or none.

    PostgreSQL: in one round trip, each bound and prepared on the server. psycopg's pipeline mode sends them
    all, then one Sync: the server runs them as one implicit transaction, and a failing one rolls back those
    before it and skips those after (a lone statement is sent without a pipeline: see _pipeline). Bound on
    the server, parameters travel as typed values instead of being quoted into the text on the client (a
    budgeted run's INSERT has 60 of them), and a statement used a few times on a pooled connection is
    prepared there: the server no longer parses and plans it on every run (a budget hold plans in 0.09 ms,
    the INSERT's admission condition in 0.05 ms). Errors are Django's, and
    the batch is logged as one query (it is one round trip) where Django logs queries. Elsewhere (SQLite)
    the statements run one by one in an atomic block, with the cursor's own parameter binding."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        alone = len(statements) == 1  # atomic by itself: no transaction of its own needed
        with (
            contextlib.nullcontext() if alone else transaction.atomic(using=alias),
            connection.cursor() as cursor,
        ):
            executed = []
            for sql, params in statements:
                cursor.execute(sql, params)
                executed.append(Executed(cursor.rowcount, cursor.fetchall() if cursor.description else []))
            return executed
    with connection.cursor() as cursor:  # Django's checks: connected, usable, this thread's, no broken atomic
        connection.validate_no_broken_transaction()
        logged = (
            cursor.debug_sql(";\n".join(sql for sql, _ in statements))
            if isinstance(cursor, CursorDebugWrapper)
            else contextlib.nullcontext()
        )
        with logged, connection.wrap_database_errors:
            return _pipeline(cursor.cursor.connection, statements)


def _pipeline(raw: Any, statements: Sequence[Statement]) -> list[Executed]:
    import psycopg  # the PostgreSQL driver: imported where PostgreSQL is in use

    cursors = []
    try:
        if len(statements) == 1:
            # Alone, a statement is its own transaction and its own round trip without a pipeline, whose
            # setup, Sync and read-or-write waits cost more CPU than the statement (a run's INSERT without a
            # budget, its final UPDATE): 1.08x requests/s for the INSERT's unit, 1.13x for the final write
            # from the loop (bench/ab.py, 2026-12-04, one run of 10 rounds each).
            cursor = psycopg.Cursor(raw)  # server-side binding (Django's own cursors bind on the client)
            cursors.append(cursor)
            cursor.execute(*statements[0])
        else:
            with raw.pipeline():
                for sql, params in statements:
                    cursor = psycopg.Cursor(raw)
                    cursors.append(cursor)
                    cursor.execute(sql, params)
        return [
            Executed(cursor.rowcount, cursor.fetchall() if cursor.description is not None else [])
            for cursor in cursors
        ]
    finally:
        for cursor in cursors:
            cursor.close()


@functools.cache
def _insert_sql(model: type[Model], alias: str, conditional: bool = False) -> str:
    """The INSERT's text; `conditional`: as `INSERT ... SELECT <values> WHERE ` (the condition follows), with
    each value cast to its column's type (PostgreSQL would take an untyped parameter there for text)."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = model._meta.local_concrete_fields
    columns = ", ".join(quote(field.column) for field in fields)
    insert = f"INSERT INTO {quote(model._meta.db_table)} ({columns})"
    if not conditional:
        return f"{insert} VALUES ({', '.join(['%s'] * len(fields))})"
    if connection.vendor == "postgresql":
        values = ", ".join(f"CAST(%s AS {field.cast_db_type(connection)})" for field in fields)
    else:
        values = ", ".join(["%s"] * len(fields))
    return f"{insert} SELECT {values} WHERE "


@functools.cache
def _update_sql(
    model: type[Model],
    alias: str,
    sets: tuple[str, ...],
    where_in: tuple[tuple[str, int], ...],
    where_null: tuple[str, ...],
) -> str:
    quote = connections[alias].ops.quote_name
    meta = model._meta
    assignments = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in sets)
    conditions = [f"{quote(meta.pk.column)} = %s"]
    conditions += [
        f"{quote(meta.get_field(name).column)} IN ({', '.join(['%s'] * count)})" for name, count in where_in
    ]
    conditions += [f"{quote(meta.get_field(name).column)} IS NULL" for name in where_null]
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {' AND '.join(conditions)}"


# ------------------------------------------------------------------------------------------- overload
#: Retry-After (seconds) of a 503 `overloaded`: every pooled connection stayed busy for DB_POOL_TIMEOUT.
OVERLOADED_RETRY_AFTER_SECONDS = 5


class Overloaded(ApplicationError):
    """No database connection came free in time: the server is beyond its capacity. A 503 with Retry-After,
    never a 500: nothing is broken and the same request will work a little later."""

    status = 503

    def __init__(self) -> None:
        super().__init__(
            "The server is overloaded (no database connection came free in time); retry shortly.",
            code="overloaded",
        )
        self.retry_after = OVERLOADED_RETRY_AFTER_SECONDS


def pool_exhausted(exc: BaseException | None) -> bool:
    """Whether `exc` is (or was caused by) the pool's "no connection in time" (PoolTimeout) or "too many
    waiting" (TooManyRequests) error, or a unit that got no slot in time (Overloaded). Django wraps it into its own OperationalError (`raise ... from`), so
    the chain is walked; any other database error is not an overload."""
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:
        return False
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, PoolTimeout | TooManyRequests | Overloaded):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
