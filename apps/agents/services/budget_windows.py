"""Spend control: budget windows (the calendar period an amount is counted in), budgets as a run holds them,
snapshots of their usage, and the refusals that name a budget, its limit and when it resets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection

from apps.agents.engine.spend import SpendRefused
from apps.agents.metrics import record_budget_refusal
from apps.agents.models import Budget, BudgetUsage
from apps.agents.models_budget import EPOCH, BudgetPeriod, budget_label, usd_to_units

if TYPE_CHECKING:
    from apps.agents.services.budget_ledger import Claim


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


# ---------------------------------------------------------------------- snapshots of the windows
@dataclass(frozen=True, slots=True)
class Window:
    """A budget window as read at one moment (a snapshot: only a hold decides)."""

    spent_units: int = 0
    reserved_units: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0
    active_runs: int = 0


Windows = dict[tuple[int, str], Window]


def window_key(budget_id: int, start: datetime) -> tuple[int, str]:
    return budget_id, str(connection.ops.adapt_datetimefield_value(start))


@dataclass(frozen=True, slots=True)
class Applicable:
    """The budgets that apply to a run (active or not: the default budget is for a user with none of their
    own) and the current windows of the active ones."""

    budgets: tuple[BudgetLimits, ...]
    inactive: tuple[BudgetLimits, ...]
    scopes: frozenset[str]
    windows: Windows


def _decimal(value: Any) -> Decimal | None:
    """A DecimalField read by a raw query: SQLite returns a float (converted as Django's own converter does)."""
    if value is None or isinstance(value, Decimal):
        return value
    return Context(prec=15).create_decimal_from_float(float(value)).quantize(Decimal("1e-10"))


def read_applicable(*, user_id: Any, agent_id: Any, now: datetime) -> Applicable:
    """Every budget that applies to `user_id` running `agent_id` (None: anonymous, no agent), with its current
    window and concurrency counter, in ONE raw query. Read before every run: the ORM's query building and
    model instances alone cost over a millisecond, more than the query; this is a tenth of that."""
    from django.contrib.auth import get_user_model

    from apps.agents.models import Agent

    users, agents, usage = get_user_model()._meta, Agent._meta, BudgetUsage._meta.db_table
    username = users.get_field(get_user_model().USERNAME_FIELD).column
    when = connection.ops.adapt_datetimefield_value
    starts = [when(period_start(period, now)) for period in ("day", "month", "total")]
    where, params = ["b.scope = 'deployment'"], [*starts, when(EPOCH)]
    if agent_id is not None:
        agent_id = agents.pk.get_db_prep_value(agent_id, connection)
        where.append("(b.scope = 'agent' AND b.agent_id = %s)")
        params.append(agent_id)
    if user_id is not None:
        user_id = users.pk.get_db_prep_value(user_id, connection)
        where.append("(b.scope = 'user' AND b.user_id = %s)")
        params.append(user_id)
        if agent_id is not None:
            where.append("(b.scope = 'user_agent' AND b.user_id = %s AND b.agent_id = %s)")
            params += [user_id, agent_id]
    sql = (
        "SELECT b.id, b.name, b.scope, b.period, b.limit_usd, b.limit_tokens, b.max_concurrent, b.is_active,"
        f" u.{username}, a.agent_id, w.period_start, w.spent_units, w.reserved_units, w.spent_tokens,"
        f" w.reserved_tokens, w.active_runs FROM {Budget._meta.db_table} b"
        f" LEFT JOIN {users.db_table} u ON u.{users.pk.column} = b.user_id"
        f" LEFT JOIN {agents.db_table} a ON a.{agents.pk.column} = b.agent_id"
        f" LEFT JOIN {usage} w ON w.budget_id = b.id AND b.is_active AND (w.period_start ="
        " CASE b.period WHEN 'day' THEN %s WHEN 'month' THEN %s ELSE %s END OR w.period_start = %s)"
        f" WHERE {' OR '.join(where)} ORDER BY b.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    budgets: dict[int, tuple[BudgetLimits, bool]] = {}
    windows: Windows = {}
    scopes = set()
    for pk, name, scope, period, usd, tokens, concurrent, active, user, agent, start, *counters in rows:
        label = budget_label(name, scope, period, user=user or "", agent=agent or "")
        budgets[pk] = BudgetLimits(pk, label, period, _decimal(usd), tokens, concurrent), bool(active)
        scopes.add(scope)
        if start is not None:
            windows[(int(pk), str(start))] = Window(*counters)
    return Applicable(
        budgets=tuple(limits for limits, active in budgets.values() if active),
        inactive=tuple(limits for limits, active in budgets.values() if not active),
        scopes=frozenset(scopes),
        windows=windows,
    )


def read_windows(budgets: Sequence[BudgetLimits], now: datetime) -> Windows:
    """The current windows (and concurrency counters) of `budgets`, in one SELECT."""
    if not budgets:
        return {}
    starts = [
        connection.ops.adapt_datetimefield_value(s)
        for s in {period_start(b.period, now) for b in budgets} | {EPOCH}
    ]
    ids = [b.id for b in budgets]
    sql = (
        "SELECT budget_id, period_start, spent_units, reserved_units, spent_tokens, reserved_tokens,"
        f" active_runs FROM {BudgetUsage._meta.db_table} WHERE budget_id IN ({', '.join(['%s'] * len(ids))})"
        f" AND period_start IN ({', '.join(['%s'] * len(starts))})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*ids, *starts])
        return {(int(row[0]), str(row[1])): Window(*row[2:]) for row in cursor.fetchall()}


def first_refusal(claims: Sequence[Claim], windows: Windows, now: datetime) -> SpendRefused | None:
    """The refusal of the first claim `windows` cannot afford (a full concurrency limit first), or None.
    A spend refusal says whether the room is spent or only held by runs in flight (then it comes back)."""
    rows = [(claim, windows.get(window_key(claim.budget.id, claim.start)) or Window()) for claim in claims]
    for claim, row in rows:
        if claim.runs and row.active_runs + claim.runs > int(claim.budget.max_concurrent or 0):
            return concurrency_refusal(claim.budget)
    for claim, row in rows:
        if not claim.spend:
            continue
        limit_units, limit_tokens = claim.budget.limit_units, claim.budget.limit_tokens
        fits_spent = (limit_units is None or row.spent_units + claim.units <= limit_units) and (
            limit_tokens is None or row.spent_tokens + claim.tokens <= limit_tokens
        )
        fits_held = (
            limit_units is None or row.spent_units + row.reserved_units + claim.units <= limit_units
        ) and (limit_tokens is None or row.spent_tokens + row.reserved_tokens + claim.tokens <= limit_tokens)
        if not fits_held:
            return refusal(claim.budget, now, held=fits_spent)
    return None


def diagnose(claims: Sequence[Claim], now: datetime) -> SpendRefused | None:
    """Why a hold of `claims` was refused, as the windows read now show it (None: it would fit now)."""
    return first_refusal(claims, read_windows([claim.budget for claim in claims], now), now)
