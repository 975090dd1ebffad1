"""Spend control's ledger: the atomic writes that hold, settle and release amounts in budget windows.

Each function is one short transaction of hand-written SQL: these run before and after every provider
attempt, and the ORM's query building alone cost more than the statements (bench/engine.py). The guarantee
is the conditional UPDATE in `_hold`: `spent + reserved <= limit - amount`. Under PostgreSQL's READ COMMITTED
an UPDATE that waited for another's row lock re-evaluates its WHERE on the new row version, and SQLite runs
one writer at a time (IMMEDIATE transactions), so two attempts can never both take the last room.

On PostgreSQL these transactions commit with synchronous_commit off: the commit is visible to every other
transaction at once (so the guarantee above is unchanged), but does not wait for the WAL to reach the disk.
Only a crash of PostgreSQL itself could lose the last fraction of a second of holds and settlements; a lost
hold is harmless once the server is back (its run failed with the crash) and a lost settlement leaves its
reservation row, which the reaper releases. A durable commit costs an fsync (several ms on these disks),
which would be most of a run's overhead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.agents.engine.spend import SpendRefused
from apps.agents.metrics import record_budget_refusal
from apps.agents.models import Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import EPOCH, BudgetPeriod, ReservationKind, usd_to_units

logger = logging.getLogger(__name__)

USAGE_TABLE = BudgetUsage._meta.db_table
RESERVATION_TABLE = BudgetReservation._meta.db_table


# ---------------------------------------------------------------------- periods
def period_start(period: str, now: datetime) -> datetime:
    """The start of the calendar window (UTC) that `now` falls in."""
    now = now.astimezone(EPOCH.tzinfo)
    if period == BudgetPeriod.DAY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.MONTH:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return EPOCH


def period_reset(period: str, start: datetime) -> datetime | None:
    """When the window starting at `start` ends (None: a total budget never resets)."""
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if period == BudgetPeriod.MONTH:
        return (start + timedelta(days=32)).replace(day=1)
    return None


# ---------------------------------------------------------------------- budgets as a run holds them
@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """A budget as a run holds it: read once per run, so each attempt costs writes only."""

    id: int
    label: str
    period: str
    limit_usd: Decimal | None
    limit_tokens: int | None
    max_concurrent: int | None

    @property
    def limit_units(self) -> int | None:
        return None if self.limit_usd is None else usd_to_units(self.limit_usd)

    @property
    def limits_spend(self) -> bool:
        return self.limit_usd is not None or self.limit_tokens is not None

    @classmethod
    def of(cls, budget: Budget) -> BudgetLimits:
        return cls(
            id=budget.pk,
            label=budget.label,
            period=budget.period,
            limit_usd=budget.limit_usd,
            limit_tokens=budget.limit_tokens,
            max_concurrent=budget.max_concurrent,
        )


# ---------------------------------------------------------------------- refusals
def _describe_limit(budget: BudgetLimits) -> str:
    parts = []
    if budget.limit_usd is not None:
        parts.append(f"{budget.limit_usd.normalize():f} USD")
    if budget.limit_tokens is not None:
        parts.append(f"{budget.limit_tokens} tokens")
    per = {"day": "per day (UTC)", "month": "per calendar month (UTC)", "total": "in total"}[budget.period]
    return f"{' and '.join(parts)} {per}"


def refusal(budget: BudgetLimits, now: datetime, *, held: bool = False) -> SpendRefused:
    """Name the budget, its limit and when it resets. When the room is held by runs in flight (not spent),
    it comes back as they settle: Retry-After is then a few seconds, not the period's end."""
    start = period_start(budget.period, now)
    reset = period_reset(budget.period, start)
    if held:
        when, retry_after = "room held by runs in flight is released as they finish", 5
    elif reset is None:
        when, retry_after = "it never resets (ask an administrator to raise it)", None
    else:
        when, retry_after = (
            f"it resets at {reset.isoformat()}",
            max(1, math.ceil((reset - now).total_seconds())),
        )
    message = f"budget '{budget.label}' cannot afford this request: limit {_describe_limit(budget)}; {when}"
    record_budget_refusal(budget.label, "spend")
    return SpendRefused(message, retry_after=retry_after, budget=budget.label)


def concurrency_refusal(budget: BudgetLimits) -> SpendRefused:
    record_budget_refusal(budget.label, "concurrency")
    return SpendRefused(
        f"budget '{budget.label}' allows {budget.max_concurrent} runs at once; wait for one to finish",
        retry_after=1,
        budget=budget.label,
    )


# ---------------------------------------------------------------------- the atomic writes
@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation as its holder knows it: enough to release it without reading it back."""

    id: int
    units: int
    tokens: int
    windows: tuple[tuple[int, datetime], ...]


def _atomic() -> Any:
    return transaction.atomic()


def _relaxed_commit(cursor: Any) -> None:
    if connection.vendor == "postgresql":
        cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _when(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _ensure_window(budget_id: int, start: datetime) -> None:
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(budget_id=budget_id, period_start=start)], ignore_conflicts=True
    )


def _hold(cursor: Any, budget: BudgetLimits, start: datetime, units: int, tokens: int) -> bool:
    """One conditional UPDATE: hold `units`/`tokens` in the window if it stays within every limit."""
    sql = (
        f"UPDATE {USAGE_TABLE} SET reserved_units = reserved_units + %s, reserved_tokens = reserved_tokens + %s"
        " WHERE budget_id = %s AND period_start = %s"
    )
    params: list[Any] = [units, tokens, budget.id, _when(start)]
    limit_units = budget.limit_units
    if limit_units is not None:
        sql += " AND spent_units + reserved_units <= %s"
        params.append(limit_units - units)
    if budget.limit_tokens is not None:
        sql += " AND spent_tokens + reserved_tokens <= %s"
        params.append(budget.limit_tokens - tokens)
    cursor.execute(sql, params)
    if cursor.rowcount:
        return True
    if BudgetUsage.objects.filter(budget_id=budget.id, period_start=start).exists():
        return False
    _ensure_window(budget.id, start)  # the window's first attempt; a concurrent creator is ignored
    cursor.execute(sql, params)
    return bool(cursor.rowcount)


def _held_only(budget: BudgetLimits, start: datetime, units: int, tokens: int) -> bool:
    """Whether the refused amount would fit once the reservations in flight are settled."""
    window = BudgetUsage.objects.filter(budget_id=budget.id, period_start=start)
    row = window.values("spent_units", "spent_tokens").first() or {}
    fits_usd = budget.limit_units is None or row.get("spent_units", 0) + units <= budget.limit_units
    fits_tokens = budget.limit_tokens is None or row.get("spent_tokens", 0) + tokens <= budget.limit_tokens
    return fits_usd and fits_tokens


def _insert_reservation(
    cursor: Any, *, execution_id: Any, kind: str, units: int, tokens: int, windows: list[tuple[int, datetime]]
) -> int:
    fields = BudgetReservation._meta
    execution = fields.get_field("execution").get_db_prep_save(execution_id, connection)
    as_json = fields.get_field("windows").get_db_prep_save(
        [[budget_id, start.isoformat()] for budget_id, start in windows], connection
    )
    cursor.execute(
        f"INSERT INTO {RESERVATION_TABLE} (execution_id, kind, amount_units, tokens, windows, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        [execution, kind, units, tokens, as_json, _when(timezone.now())],
    )
    return int(cursor.fetchone()[0])


def reserve(
    *,
    execution_id: Any,
    budgets: Sequence[BudgetLimits],
    units: int,
    tokens: int,
    now: datetime | None = None,
) -> Hold | None:
    """Hold `units` and `tokens` in the current window of every budget with a spend limit, or in none of
    them (SpendRefused naming the first budget that cannot afford it)."""
    now = now or timezone.now()
    windows: list[tuple[int, datetime]] = []
    with _atomic(), connection.cursor() as cursor:
        _relaxed_commit(cursor)
        for budget in budgets:
            if not budget.limits_spend:
                continue
            start = period_start(budget.period, now)
            if not _hold(cursor, budget, start, units, tokens):
                raise refusal(budget, now, held=_held_only(budget, start, units, tokens))
            windows.append((budget.id, start))
        if not windows:
            return None
        pk = _insert_reservation(
            cursor,
            execution_id=execution_id,
            kind=ReservationKind.SPEND,
            units=units,
            tokens=tokens,
            windows=windows,
        )
    return Hold(pk, units, tokens, tuple(windows))


def _release(cursor: Any, hold: Hold) -> bool:
    cursor.execute(f"DELETE FROM {RESERVATION_TABLE} WHERE id = %s", [hold.id])
    return bool(cursor.rowcount)


def settle(hold: Hold, *, spent_units: int, spent_tokens: int) -> bool:
    """Move the attempt's exact cost to `spent` and release the rest; False if it was released already
    (the reservation row is deleted first: only one of the holder and the reaper adjusts the counters)."""
    with _atomic(), connection.cursor() as cursor:
        _relaxed_commit(cursor)
        if not _release(cursor, hold):
            return False
        for budget_id, start in hold.windows:
            cursor.execute(
                f"UPDATE {USAGE_TABLE} SET reserved_units = reserved_units - %s,"
                " reserved_tokens = reserved_tokens - %s, spent_units = spent_units + %s,"
                " spent_tokens = spent_tokens + %s WHERE budget_id = %s AND period_start = %s",
                [hold.units, hold.tokens, spent_units, spent_tokens, budget_id, _when(start)],
            )
    return True


def _take_slot(cursor: Any, budget: BudgetLimits) -> bool:
    sql = (
        f"UPDATE {USAGE_TABLE} SET active_runs = active_runs + 1"
        " WHERE budget_id = %s AND period_start = %s AND active_runs < %s"
    )
    params = [budget.id, _when(EPOCH), budget.max_concurrent]
    cursor.execute(sql, params)
    if cursor.rowcount:
        return True
    _ensure_window(budget.id, EPOCH)
    cursor.execute(sql, params)
    return bool(cursor.rowcount)


def acquire_slot(*, execution_id: Any, budgets: Sequence[BudgetLimits]) -> Hold | None:
    """One run in flight more in every budget with max_concurrent, or in none (SpendRefused)."""
    windows: list[tuple[int, datetime]] = []
    with _atomic(), connection.cursor() as cursor:
        _relaxed_commit(cursor)
        for budget in budgets:
            if budget.max_concurrent is None:
                continue
            if not _take_slot(cursor, budget):
                raise concurrency_refusal(budget)
            windows.append((budget.id, EPOCH))
        if not windows:
            return None
        pk = _insert_reservation(
            cursor, execution_id=execution_id, kind=ReservationKind.SLOT, units=0, tokens=0, windows=windows
        )
    return Hold(pk, 0, 0, tuple(windows))


def release_slot(hold: Hold) -> bool:
    with _atomic(), connection.cursor() as cursor:
        _relaxed_commit(cursor)
        if not _release(cursor, hold):
            return False
        for budget_id, start in hold.windows:
            cursor.execute(
                f"UPDATE {USAGE_TABLE} SET active_runs = active_runs - 1 WHERE budget_id = %s AND period_start = %s",
                [budget_id, _when(start)],
            )
    return True


@dataclass(frozen=True, slots=True)
class Window:
    """A budget window as read at admission (a snapshot: only the reservation decides)."""

    spent_units: int = 0
    reserved_units: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0
    active_runs: int = 0


Windows = dict[tuple[int, str], Window]


def window_key(budget_id: int, start: datetime) -> tuple[int, str]:
    return budget_id, str(_when(start))


def read_windows(budgets: Sequence[BudgetLimits], now: datetime) -> Windows:
    """The current windows (and concurrency counters) of `budgets`, in one SELECT."""
    starts = {period_start(b.period, now) for b in budgets} | {EPOCH}
    if not budgets:
        return {}
    ids = [b.id for b in budgets]
    sql = (
        "SELECT budget_id, period_start, spent_units, reserved_units, spent_tokens, reserved_tokens,"
        f" active_runs FROM {USAGE_TABLE} WHERE budget_id IN ({', '.join(['%s'] * len(ids))})"
        f" AND period_start IN ({', '.join(['%s'] * len(starts))})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*ids, *(_when(start) for start in starts)])
        return {(int(row[0]), str(row[1])): Window(*row[2:]) for row in cursor.fetchall()}


def _hold_of(row: BudgetReservation) -> Hold:
    windows = tuple((int(budget_id), datetime.fromisoformat(start)) for budget_id, start in row.windows)
    return Hold(row.pk, row.amount_units, row.tokens, windows)


def release(rows: Iterable[BudgetReservation]) -> int:
    """Release reservations whose holder is gone, spending nothing: what the lost attempt used is not known.
    Returns how many were released (a row released meanwhile by its holder is skipped)."""
    released = 0
    for row in rows:
        hold = _hold_of(row)
        if row.kind == ReservationKind.SLOT:
            done = release_slot(hold)
        else:
            done = settle(hold, spent_units=0, spent_tokens=0)
        if done:
            released += 1
            logger.warning(
                "released the %s reservation %s of a lost run",
                row.kind,
                row.pk,
                extra={"execution_id": str(row.execution_id)},
            )
    return released


# ---------------------------------------------------------------------- the reaper's part
def release_orphaned(
    *, lost: Iterable[Any] = (), now: datetime | None = None, grace: timedelta, sweep: bool = True
) -> int:
    """Release the reservations no live process will settle: those of runs the reaper just found lost
    (their worker is dead), and those of any ended run older than `grace` (a process that ended its run
    settles first; one whose row was ended under it, e.g. timed out, gets `grace` to settle its last
    attempt itself, with its real usage)."""
    from apps.agents.models import TERMINAL_STATUSES

    now = now or timezone.now()
    orphaned = Q(pk__in=[])
    if sweep:
        orphaned |= Q(execution__status__in=list(TERMINAL_STATUSES), created_at__lt=now - grace)
        orphaned |= Q(execution__isnull=True, created_at__lt=now - grace)
    lost = [str(pk) for pk in lost]
    if lost:
        orphaned |= Q(execution_id__in=lost)
    return release(BudgetReservation.objects.filter(orphaned).order_by("id")[:1000])
