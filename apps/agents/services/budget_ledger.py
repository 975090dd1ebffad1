"""Spend control's ledger: the writes that hold, settle and release amounts in budget windows.

One step, one round trip. A hold (before a provider attempt) claims room in every budget window that applies,
and on the run's first attempt its concurrency slot too, in ONE statement that changes all of those usage rows
or none of them:

    UPDATE usage SET reserved = reserved + amount, active_runs = active_runs + CASE ... END
     WHERE <the rows> AND (SELECT count(*) FROM usage WHERE <row 1 fits> OR <row 2 fits> ...) = <rows>
     (the count only with several rows: one row's own WHERE is the whole condition)

and writes the reservation rows (the proof of the hold) only if it did (a run's first hold usually goes with
the INSERT of its execution row, in that statement's round trip: insert_and_hold). Settling deletes the
reservation row and moves its amount from reserved to spent only if the row was still there, so a
reservation is never released twice (its holder and the reaper race for the DELETE; one wins).

Why no hold can overshoot: on PostgreSQL (READ COMMITTED) a step that changes several rows first locks them in
a fixed order (`SELECT ... ORDER BY ... FOR UPDATE`, which waits for concurrent holders), and the UPDATE that
follows takes a new snapshot: the count it checks is the latest committed state, which nobody else can change
while the locks are held. A step on one row needs no lock: that row's own conditions are in the UPDATE's
WHERE, which PostgreSQL re-checks on the latest version of a row it had to wait for. SQLite runs one writer at
a time (IMMEDIATE transactions), so the count and the UPDATE see the same state there too.

PostgreSQL: each step's statements are sent together (services/db.py execute_statements: psycopg's pipeline
mode, one Sync), so the server runs them back to back as one implicit transaction: one round trip, and an
error rolls all of it back. Each is bound and, after a few runs on a pooled connection, prepared on the
server, which then no longer parses and plans it (a hold planned in 0.09 ms). A window's first hold (once per budget and period) takes a second round trip to
create the window's row. Data-modifying CTEs make the hold and the settlement one statement each. The
transaction commits with synchronous_commit off: visible to every other transaction at once (the guarantee
above is unchanged), but not waiting for the WAL fsync. Only a crash of PostgreSQL itself could lose the last
fraction of a second of holds and settlements; a lost hold is harmless once the server is back (its run
failed with the crash), and a lost settlement leaves its reservation row for the reaper. SQLite (and any other
database) runs the same statements one by one in a transaction; it has no data-modifying CTEs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.agents.models import AgentExecution, Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import EPOCH, ReservationKind
from apps.agents.services.budget_windows import BudgetLimits, diagnose, period_start, refusal
from apps.agents.services.db import Statement, execute_statements

logger = logging.getLogger(__name__)

USAGE = BudgetUsage._meta.db_table
RESERVATIONS = BudgetReservation._meta.db_table
EXECUTIONS = AgentExecution._meta.db_table
EXECUTION_ID = AgentExecution._meta.pk.column
_KEY = "(budget_id = %s AND period_start = %s)"
_RESERVATION_COLUMNS = ("execution_id", "kind", "amount_units", "tokens", "windows", "created_at")

WindowKey = tuple[int, datetime]


def _when(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def windows_where(windows: Iterable[WindowKey]) -> tuple[str, list[Any]]:
    windows = list(windows)
    params = [value for budget_id, start in windows for value in (budget_id, _when(start))]
    return " OR ".join([_KEY] * len(windows)), params


# ---------------------------------------------------------------------- what a hold claims
@dataclass(frozen=True, slots=True)
class Claim:
    """Room one hold needs in one usage row (a budget window), and the limits that row must stay within."""

    budget: BudgetLimits
    start: datetime
    units: int = 0
    tokens: int = 0
    runs: int = 0
    spend: bool = False  # checked against the spend limits (a slot alone checks max_concurrent only)

    @property
    def window(self) -> WindowKey:
        return self.budget.id, self.start

    def fits(self) -> tuple[str, list[Any]]:
        """This row, if the claim fits in it: `spent + reserved <= limit - amount` for each limit."""
        sql, params = [_KEY], [self.budget.id, _when(self.start)]
        limit_units, limit_tokens = self.budget.limit_units, self.budget.limit_tokens
        if self.spend and limit_units is not None:
            sql.append("spent_units + reserved_units <= %s")
            params.append(limit_units - self.units)
        if self.spend and limit_tokens is not None:
            sql.append("spent_tokens + reserved_tokens <= %s")
            params.append(limit_tokens - self.tokens)
        if self.runs:
            sql.append("active_runs <= %s")
            params.append(int(self.budget.max_concurrent or 0) - self.runs)
        return "(" + " AND ".join(sql) + ")", params


def claims_for(
    budgets: Sequence[BudgetLimits], *, units: int, tokens: int, spend: bool, slot: bool, now: datetime
) -> list[Claim]:
    """One claim per usage row, in lock order: a budget's current window for the spend, its EPOCH row for a
    run slot. A total budget's spend window is its EPOCH row too: merged, checked against both limits."""
    merged: dict[WindowKey, Claim] = {}
    for budget in budgets:
        if spend and budget.limits_spend:
            start = period_start(budget.period, now)
            merged[(budget.id, start)] = Claim(budget, start, units, tokens, spend=True)
        if slot and budget.max_concurrent is not None:
            same = merged.get((budget.id, EPOCH))
            merged[(budget.id, EPOCH)] = replace(same, runs=1) if same else Claim(budget, EPOCH, runs=1)
    return [merged[window] for window in sorted(merged)]


# ---------------------------------------------------------------------- holds and their release
@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation as its holder knows it: enough to release it without reading it back."""

    id: int
    units: int
    tokens: int
    windows: tuple[WindowKey, ...]
    kind: str = ReservationKind.SPEND


@dataclass(frozen=True, slots=True)
class Release:
    """A hold to release: a spend hold settles `spent_*` (exact, or `estimated`: the reaper's worst case)."""

    hold: Hold
    spent_units: int = 0
    spent_tokens: int = 0
    estimated: bool = False

    def deltas(self) -> dict[str, int]:
        if self.hold.kind == ReservationKind.SLOT:
            return {"active_runs": -1}
        deltas = {
            "reserved_units": -self.hold.units,
            "reserved_tokens": -self.hold.tokens,
            "spent_units": self.spent_units,
            "spent_tokens": self.spent_tokens,
        }
        if self.estimated:
            deltas |= {"estimated_units": self.spent_units, "estimated_tokens": self.spent_tokens}
        return deltas


@dataclass(frozen=True, slots=True)
class Outcome:
    released: list[bool]  # per Release: False if it had been released already
    holds: dict[str, Hold] | None  # by kind; None: refused (nothing held)


def _set_clause(deltas: dict[str, int]) -> tuple[str, list[Any]]:
    changed = {column: delta for column, delta in deltas.items() if delta}
    if not changed:  # a release of nothing still needs a valid UPDATE
        return "active_runs = active_runs", []
    return ", ".join(f"{column} = {column} + %s" for column in changed), list(changed.values())


def _hold_set_clause(claims: Sequence[Claim]) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    for column, attribute in (
        ("reserved_units", "units"),
        ("reserved_tokens", "tokens"),
        ("active_runs", "runs"),
    ):
        rows = [claim for claim in claims if getattr(claim, attribute)]
        if not rows:
            continue
        if len(rows) == len(claims) and len({getattr(claim, attribute) for claim in rows}) == 1:
            parts.append(f"{column} = {column} + %s")
            params.append(getattr(rows[0], attribute))
            continue
        cases = " ".join(f"WHEN {_KEY} THEN %s" for _ in rows)
        parts.append(f"{column} = {column} + CASE {cases} ELSE 0 END")
        for claim in rows:
            params += [claim.budget.id, _when(claim.start), getattr(claim, attribute)]
    return ", ".join(parts) or "active_runs = active_runs", params


def _reservation_rows(claims: Sequence[Claim], execution_id: Any) -> list[tuple[str, Hold, list[Any]]]:
    """The reservation rows a hold writes: one for the spend, one for a run slot. (kind, hold, values)."""
    fields = BudgetReservation._meta
    execution = fields.get_field("execution").get_db_prep_save(execution_id, connection)
    created = _when(timezone.now())
    rows = []
    for kind, members in (
        (ReservationKind.SPEND, [c for c in claims if c.spend]),
        (ReservationKind.SLOT, [c for c in claims if c.runs]),
    ):
        if not members:
            continue
        units = members[0].units if kind == ReservationKind.SPEND else 0
        tokens = members[0].tokens if kind == ReservationKind.SPEND else 0
        windows = tuple(claim.window for claim in members)
        stored = fields.get_field("windows").get_db_prep_save(
            [[budget_id, start.isoformat()] for budget_id, start in windows], connection
        )
        hold = Hold(0, units, tokens, windows, kind)
        rows.append((str(kind), hold, [execution, str(kind), units, tokens, stored, created]))
    return rows


def _create_missing_windows(claims: Sequence[Claim]) -> bool:
    """Create the window rows `claims` need that are missing (a window's first hold), for budgets that still
    exist (a deleted one's hold is refused, not failed on the foreign key). Whether any was missing."""
    keys, params = windows_where(claim.window for claim in claims)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT budget_id, period_start FROM {USAGE} WHERE {keys}", params)
        present = {(int(budget_id), str(start)) for budget_id, start in cursor.fetchall()}
    missing = [c for c in claims if (c.budget.id, str(_when(c.start))) not in present]
    if missing:
        existing = set(
            Budget.objects.filter(pk__in={c.budget.id for c in missing}).values_list("pk", flat=True)
        )
        BudgetUsage.objects.bulk_create(  # a concurrent creator is ignored
            [
                BudgetUsage(budget_id=c.budget.id, period_start=c.start)
                for c in missing
                if c.budget.id in existing
            ],
            ignore_conflicts=True,
        )
    return bool(missing)


class _Ledger:
    """Portable: the statements one by one in a transaction (SQLite: one writer at a time)."""

    def apply(self, releases: Sequence[Release], claims: Sequence[Claim], execution_id: Any) -> Outcome:
        with transaction.atomic(), connection.cursor() as cursor:
            released = [self._release(cursor, release) for release in releases]
            holds = self._hold(cursor, claims, execution_id) if claims else {}
        return Outcome(released, holds)

    def _release(self, cursor: Any, release: Release) -> bool:
        for statement, params in _portable_release(release):
            cursor.execute(statement, params)
        return bool(cursor.rowcount)  # the DELETE's: False if the reservation had been released already

    def _hold(self, cursor: Any, claims: Sequence[Claim], execution_id: Any) -> dict[str, Hold] | None:
        cursor.execute(*_hold_update(claims))
        if not cursor.rowcount:
            return None
        holds = {}
        for kind, hold, values in _reservation_rows(claims, execution_id):
            cursor.execute(
                f"INSERT INTO {RESERVATIONS} ({', '.join(_RESERVATION_COLUMNS)})"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                values,
            )
            holds[kind] = replace(hold, id=int(cursor.fetchone()[0]))
        return holds


def _hold_update(claims: Sequence[Claim], *, if_row: Any = None) -> tuple[str, list[Any]]:
    """The all-or-nothing UPDATE of a hold (without RETURNING): every claimed row that fits, if all fit.
    Each row's own conditions are in the WHERE too, so that PostgreSQL re-checks them on the row's latest
    version if it waited for another writer (enough when one row is claimed; more are locked first).
    `if_row`: only if the execution row of that id exists (insert_and_hold: its INSERT may have written none)."""
    changes, change_params = _hold_set_clause(claims)
    fits = [claim.fits() for claim in claims]
    any_fits = " OR ".join(sql for sql, _ in fits)
    fit_params = [p for _, params in fits for p in params]
    sql = f"UPDATE {USAGE} SET {changes} WHERE ({any_fits})"
    params = [*change_params, *fit_params]
    if len(claims) > 1:  # all or nothing; one row's own WHERE is enough
        sql += f" AND (SELECT count(*) FROM {USAGE} WHERE {any_fits}) = %s"
        params += [*fit_params, len(claims)]
    if if_row is not None:
        sql += f" AND EXISTS (SELECT 1 FROM {EXECUTIONS} WHERE {EXECUTION_ID} = %s)"
        params.append(if_row)
    return sql, params


class _PostgresLedger:
    """One round trip per step: lock, release, hold (see the module's docstring)."""

    def apply(self, releases: Sequence[Release], claims: Sequence[Claim], execution_id: Any) -> Outcome:
        statements: list[Statement] = [("SELECT set_config('synchronous_commit', 'off', true)", [])]
        statements += _postgres_releases(releases, {c.window for c in claims})
        release_at = range(len(statements) - len(releases), len(statements))  # the last ones
        rows = _reservation_rows(claims, execution_id) if claims else []
        if claims:
            statements.append(_postgres_hold(claims, rows))
        results = [executed.rows for executed in execute_statements(statements)]
        released = [bool(results[at][0][0]) for at in release_at]
        if not claims:
            return Outcome(released, {})
        return Outcome(released, _held(rows, results[-1]))


def _postgres_hold(
    claims: Sequence[Claim], rows: Sequence[tuple[str, Hold, list[Any]]], *, if_row: Any = None
) -> Statement:
    """A hold as one statement: the all-or-nothing UPDATE, and the reservation rows only if it changed any
    (a data-modifying CTE); its result is each reservation's (id, kind)."""
    update, update_params = _hold_update(claims, if_row=if_row)
    casts = ("uuid", "varchar", "bigint", "bigint", "jsonb", "timestamptz")
    first = ", ".join(f"%s::{cast}" for cast in casts)
    values = ", ".join([f"({first})"] + ["(%s, %s, %s, %s, %s, %s)"] * (len(rows) - 1))
    return (
        f"WITH held AS ({update} RETURNING 1)"
        f" INSERT INTO {RESERVATIONS} ({', '.join(_RESERVATION_COLUMNS)})"
        f" SELECT * FROM (VALUES {values}) AS v WHERE EXISTS (SELECT 1 FROM held) RETURNING id, kind",
        [*update_params, *(value for _, _, row in rows for value in row)],
    )


def _held(
    rows: Sequence[tuple[str, Hold, list[Any]]], returned: Sequence[tuple[Any, ...]]
) -> dict[str, Hold] | None:
    """The holds of `rows` with the ids the hold's statement returned; None if it held nothing."""
    ids = {kind: int(pk) for pk, kind in returned}
    if not ids:
        return None
    return {kind: replace(hold, id=ids[kind]) for kind, hold, _ in rows}


def _postgres_releases(releases: Sequence[Release], locked: Iterable[WindowKey] = ()) -> list[Statement]:
    """Lock the rows of `releases` (and `locked`), then one statement per release, counting what it deleted."""
    statements: list[Statement] = []
    windows = sorted({w for r in releases for w in r.hold.windows} | set(locked))
    # A step on several rows locks them all first, in one order (no two steps wait for each other in a
    # cycle); on one row its UPDATE's re-check is enough (_hold_update).
    if len(windows) > 1:
        keys, key_params = windows_where(windows)
        lock = f"SELECT 1 FROM {USAGE} WHERE {keys} ORDER BY budget_id, period_start FOR UPDATE"
        statements.append((lock, key_params))
    for release in releases:
        keys, key_params = windows_where(release.hold.windows)
        changes, change_params = _set_clause(release.deltas())
        gone = f"WITH gone AS (DELETE FROM {RESERVATIONS} WHERE id = %s RETURNING id)"
        moved = f"moved AS (UPDATE {USAGE} SET {changes} WHERE ({keys}) AND EXISTS (SELECT 1 FROM gone) RETURNING 1)"
        statements.append(
            (f"{gone}, {moved} SELECT count(*) FROM gone", [release.hold.id, *change_params, *key_params])
        )
    return statements


def _portable_release(release: Release) -> list[Statement]:
    """Move the usage if the reservation row is still there, then delete it (one writer at a time: SQLite)."""
    keys, key_params = windows_where(release.hold.windows)
    changes, params = _set_clause(release.deltas())
    exists = f"EXISTS (SELECT 1 FROM {RESERVATIONS} WHERE id = %s)"
    return [
        (
            f"UPDATE {USAGE} SET {changes} WHERE ({keys}) AND {exists}",
            [*params, *key_params, release.hold.id],
        ),
        (f"DELETE FROM {RESERVATIONS} WHERE id = %s", [release.hold.id]),
    ]


def release_statements(releases: Sequence[Release]) -> list[Statement]:
    """`releases` for another write to send ahead of its own in its transaction (a run's last settlement and
    slot with its outcome): on PostgreSQL in its round trip, committed as it is (no synchronous_commit off)."""
    if connection.vendor == "postgresql":
        return _postgres_releases(releases)
    return [statement for release in releases for statement in _portable_release(release)]


def _ledger() -> _Ledger | _PostgresLedger:
    return _PostgresLedger() if connection.vendor == "postgresql" else _Ledger()


def apply(
    releases: Sequence[Release] = (), claims: Sequence[Claim] = (), *, execution_id: Any = None
) -> Outcome:
    """Release `releases`, then hold `claims` (all of them or none): one round trip on PostgreSQL."""
    if not releases and not claims:
        return Outcome([], {})
    return _ledger().apply(releases, claims, execution_id)


def hold(
    claims: Sequence[Claim],
    *,
    execution_id: Any,
    releases: Sequence[Release] = (),
    now: datetime | None = None,
) -> tuple[dict[str, Hold], list[bool]]:
    """Release `releases` and hold `claims`, or raise SpendRefused naming the first budget that cannot afford
    them (the releases are made either way). Returns the holds by kind and which releases were made."""
    now = now or timezone.now()
    outcome = apply(releases, claims, execution_id=execution_id)
    holds = outcome.holds
    if holds is None and _create_missing_windows(claims):  # the windows' first hold: a second round trip
        holds = apply((), claims, execution_id=execution_id).holds
    if holds is None:
        refused = diagnose(claims, now)
        if refused is None:  # the room it found full came back just after: try once more
            holds = apply((), claims, execution_id=execution_id).holds
            if holds is None:
                refused = diagnose(claims, now) or refusal(claims[0].budget, now, held=True)
        if refused is not None:
            raise refused
    assert holds is not None
    return holds, outcome.released


def insert_and_hold(
    insert: Statement, claims: Sequence[Claim], *, execution_id: Any
) -> tuple[bool, dict[str, Hold]]:
    """Write `insert`, a (conditional) INSERT of the execution row `execution_id`, and hold `claims` for it
    if it wrote the row: a run's first hold made with its admission (services/budgets.py, AdmissionHold),
    in the INSERT's round trip on PostgreSQL, its transaction elsewhere. Whether the row was written, and the
    holds: none when the claims do not fit or a window has no row yet. Neither refuses the run: its first
    attempt then holds what it needs as every other attempt does (hold())."""
    rows = _reservation_rows(claims, execution_id)
    if connection.vendor == "postgresql":
        # Several windows are locked first, in order, as every hold does (_postgres_releases).
        statements = [insert, *_postgres_releases((), {c.window for c in claims})]
        statements.append(_postgres_hold(claims, rows, if_row=rows[0][2][0]))
        executed = execute_statements(statements)
        written = executed[0].rowcount == 1  # the INSERT's
        return written, (_held(rows, executed[-1].rows) or {}) if written else {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*insert)
        if cursor.rowcount != 1:
            return False, {}
        return True, _Ledger()._hold(cursor, claims, execution_id) or {}
