"""Spend control (writes): which budgets apply to a run, and the atomic reservation / settlement of each
provider attempt against them.

    admission (before the row exists)   precheck(): a budget already exhausted or full -> 429, nothing written
    each attempt                         BudgetGuard.reserve(): one conditional UPDATE per budget window,
                                         `spent + reserved + amount <= limit`, all in one transaction
    after each attempt                   BudgetGuard.settle(): the exact cost moves from reserved to spent
    end of the run                       BudgetGuard.close(): the run's concurrency slot is freed
    a worker died                        release_orphaned(): called by the reaper

The conditional UPDATE is the whole guarantee: under PostgreSQL's READ COMMITTED an UPDATE that waited for
another's row lock re-evaluates its WHERE on the new row, and SQLite serialises writers, so two attempts can
never both take the last room. Money is in integer units (models_budget.UNITS_PER_USD).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import BigIntegerField, F, Q, Value
from django.utils import timezone

from apps.agents.engine.spend import AttemptSpec, SpendRefused
from apps.agents.errors import BudgetExceeded
from apps.agents.metrics import record_budget_refusal
from apps.agents.models import Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import EPOCH, BudgetPeriod, BudgetScope, ReservationKind, usd_to_units
from apps.platforms.base import Usage

logger = logging.getLogger(__name__)

Cost = Callable[[str, str, Usage], Decimal]


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


# ---------------------------------------------------------------------- which budgets apply
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


def applicable_query(*, user: Any, agent: Any) -> Q:
    condition = Q(scope=BudgetScope.DEPLOYMENT)
    if agent is not None and getattr(agent, "pk", None) is not None:
        condition |= Q(scope=BudgetScope.AGENT, agent_id=agent.pk)
    if getattr(user, "is_authenticated", False):
        condition |= Q(scope=BudgetScope.USER, user_id=user.pk)
        if agent is not None and getattr(agent, "pk", None) is not None:
            condition |= Q(scope=BudgetScope.USER_AGENT, user_id=user.pk, agent_id=agent.pk)
    return condition


def applicable_budgets(*, user: Any, agent: Any) -> list[BudgetLimits]:
    """Every active budget that applies to `user` running `agent`, ordered by id (the order in which rows
    are locked, so two runs never wait on each other in a cycle). A user without a budget of their own gets
    one from BUDGET_DEFAULT_USER, written once and editable like any other."""
    rows = list(
        Budget.objects.filter(applicable_query(user=user, agent=agent))
        .select_related("user", "agent")
        .order_by("id")
    )
    if getattr(user, "is_authenticated", False) and not any(b.scope == BudgetScope.USER for b in rows):
        default = default_user_budget(user)
        if default is not None:
            rows = sorted([*rows, default], key=lambda b: b.pk)
    return [BudgetLimits.of(budget) for budget in rows if budget.is_active]


def default_user_budget(user: Any) -> Budget | None:
    spec = settings.BUDGET_DEFAULT_USER or {}
    if not spec:
        return None
    period = str(spec.get("period", BudgetPeriod.MONTH))
    budget, _ = Budget.objects.get_or_create(
        scope=BudgetScope.USER,
        user=user,
        period=period,
        defaults={
            "limit_usd": Decimal(str(spec["usd"])) if spec.get("usd") is not None else None,
            "limit_tokens": int(spec["tokens"]) if spec.get("tokens") is not None else None,
            "max_concurrent": int(spec["max_concurrent"]) if spec.get("max_concurrent") else None,
            "from_default": True,
        },
    )
    return budget


aapplicable_budgets = sync_to_async(applicable_budgets)


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
def _window(budget_id: int, start: datetime) -> Any:
    return BudgetUsage.objects.filter(budget_id=budget_id, period_start=start)


def _ensure_window(budget_id: int, start: datetime) -> None:
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(budget_id=budget_id, period_start=start)], ignore_conflicts=True
    )


def _big(value: int) -> Value:
    return Value(value, output_field=BigIntegerField())


def _hold(budget: BudgetLimits, start: datetime, units: int, tokens: int) -> bool:
    """One conditional UPDATE: hold `units`/`tokens` in the window if it stays within every limit."""
    room = Q()
    limit_units = budget.limit_units
    if limit_units is not None:
        room &= Q(spent_units__lte=_big(limit_units - units) - F("reserved_units"))
    if budget.limit_tokens is not None:
        room &= Q(spent_tokens__lte=_big(budget.limit_tokens - tokens) - F("reserved_tokens"))
    change = {"reserved_units": F("reserved_units") + units, "reserved_tokens": F("reserved_tokens") + tokens}
    if _window(budget.id, start).filter(room).update(**change):
        return True
    if _window(budget.id, start).exists():
        return False
    _ensure_window(budget.id, start)  # the window's first attempt; a concurrent creator is ignored
    return bool(_window(budget.id, start).filter(room).update(**change))


def _held_only(budget: BudgetLimits, start: datetime, units: int, tokens: int) -> bool:
    """Whether the refused amount would fit once the reservations in flight are settled."""
    row = _window(budget.id, start).values("spent_units", "spent_tokens").first() or {}
    fits_usd = budget.limit_units is None or row.get("spent_units", 0) + units <= budget.limit_units
    fits_tokens = budget.limit_tokens is None or row.get("spent_tokens", 0) + tokens <= budget.limit_tokens
    return fits_usd and fits_tokens


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation as its holder knows it: enough to release it without reading it back."""

    id: int
    units: int
    tokens: int
    windows: tuple[tuple[int, datetime], ...]


def reserve(
    *,
    execution_id: Any,
    budgets: Sequence[BudgetLimits],
    units: int,
    tokens: int,
    now: datetime | None = None,
) -> Hold | None:
    """Hold `units` and `tokens` in the current window of every budget with a spend limit, or none of them
    (SpendRefused naming the first budget that cannot afford it)."""
    now = now or timezone.now()
    windows: list[tuple[int, datetime]] = []
    with transaction.atomic():
        for budget in budgets:
            if not budget.limits_spend:
                continue
            start = period_start(budget.period, now)
            if not _hold(budget, start, units, tokens):
                held = _held_only(budget, start, units, tokens)
                raise refusal(budget, now, held=held)
            windows.append((budget.id, start))
        if not windows:
            return None
        row = BudgetReservation.objects.create(
            execution_id=execution_id,
            amount_units=units,
            tokens=tokens,
            windows=[[budget_id, start.isoformat()] for budget_id, start in windows],
        )
    return Hold(row.pk, units, tokens, tuple(windows))


def settle(hold: Hold, *, spent_units: int, spent_tokens: int) -> bool:
    """Move the attempt's exact cost to `spent` and release the rest; False if it was released already."""
    with transaction.atomic():
        if not BudgetReservation.objects.filter(pk=hold.id).delete()[0]:
            return False
        for budget_id, start in hold.windows:
            _window(budget_id, start).update(
                reserved_units=F("reserved_units") - hold.units,
                reserved_tokens=F("reserved_tokens") - hold.tokens,
                spent_units=F("spent_units") + spent_units,
                spent_tokens=F("spent_tokens") + spent_tokens,
            )
    return True


def acquire_slot(*, execution_id: Any, budgets: Sequence[BudgetLimits]) -> Hold | None:
    """One run in flight more in every budget with max_concurrent, or in none (SpendRefused)."""
    windows: list[tuple[int, datetime]] = []
    with transaction.atomic():
        for budget in budgets:
            if budget.max_concurrent is None:
                continue
            room = Q(active_runs__lt=budget.max_concurrent)
            if not _window(budget.id, EPOCH).filter(room).update(active_runs=F("active_runs") + 1):
                _ensure_window(budget.id, EPOCH)
                if not _window(budget.id, EPOCH).filter(room).update(active_runs=F("active_runs") + 1):
                    raise concurrency_refusal(budget)
            windows.append((budget.id, EPOCH))
        if not windows:
            return None
        row = BudgetReservation.objects.create(
            execution_id=execution_id,
            kind=ReservationKind.SLOT,
            windows=[[budget_id, start.isoformat()] for budget_id, start in windows],
        )
    return Hold(row.pk, 0, 0, tuple(windows))


def release_slot(hold: Hold) -> bool:
    with transaction.atomic():
        if not BudgetReservation.objects.filter(pk=hold.id).delete()[0]:
            return False
        for budget_id, start in hold.windows:
            _window(budget_id, start).update(active_runs=F("active_runs") - 1)
    return True


def _hold_of(row: BudgetReservation) -> Hold:
    windows = tuple((int(budget_id), datetime.fromisoformat(start)) for budget_id, start in row.windows)
    return Hold(row.pk, row.amount_units, row.tokens, windows)


def release(rows: Iterable[BudgetReservation]) -> int:
    """Release reservations whose holder is gone, spending nothing: what the lost attempt used is not known.
    Returns how many were released (a row released meanwhile by its holder is skipped)."""
    released = 0
    for row in rows:
        hold = _hold_of(row)
        done = (
            release_slot(hold)
            if row.kind == ReservationKind.SLOT
            else settle(hold, spent_units=0, spent_tokens=0)
        )
        if done:
            released += 1
            logger.warning(
                "released the %s reservation %s of a lost run",
                row.kind,
                row.pk,
                extra={"execution_id": str(row.execution_id)},
            )
    return released


# ---------------------------------------------------------------------- the engine's hook
@dataclass(frozen=True, slots=True)
class Reserved:
    """What the guard hands the engine for one attempt: the hold, and what to price the real usage at."""

    hold: Hold | None
    platform: str
    model: str


class BudgetGuard:
    """The engine's SpendGuard for one run: prices each attempt's worst case, holds it, settles it."""

    def __init__(
        self, *, execution_id: Any, budgets: Sequence[BudgetLimits], cost: Cost, output_cap: int
    ) -> None:
        self.execution_id = execution_id
        self.budgets = tuple(budgets)
        self.cost = cost
        self.output_cap = output_cap
        self._slot: Hold | None = None
        self._needs_slot = any(b.max_concurrent is not None for b in self.budgets)
        self._spends = any(b.limits_spend for b in self.budgets)

    def _reserve_sync(self, attempt: AttemptSpec) -> Reserved:
        if self._needs_slot and self._slot is None:
            self._slot = acquire_slot(execution_id=self.execution_id, budgets=self.budgets)
        hold = None
        if self._spends:
            hold = reserve(
                execution_id=self.execution_id,
                budgets=self.budgets,
                units=usd_to_units(self.cost(attempt.platform, attempt.model, attempt.usage)),
                tokens=attempt.usage.total_tokens,
            )
        return Reserved(hold, attempt.platform, attempt.model)

    async def reserve(self, attempt: AttemptSpec) -> Reserved:
        return await sync_to_async(self._reserve_sync)(attempt)

    async def settle(self, reservation: Reserved, usage: Usage) -> None:
        if reservation.hold is None:
            return
        try:
            await sync_to_async(self._settle_sync)(reservation, usage)
        except Exception:  # the reaper releases it; the run's own outcome must not be lost to this
            logger.exception(
                "settling reservation %s failed",
                reservation.hold.id,
                extra={"execution_id": str(self.execution_id)},
            )

    def _settle_sync(self, reservation: Reserved, usage: Usage) -> None:
        assert reservation.hold is not None
        units = (
            usd_to_units(self.cost(reservation.platform, reservation.model, usage))
            if usage.total_tokens
            else 0
        )
        settle(reservation.hold, spent_units=units, spent_tokens=usage.total_tokens)

    async def close(self) -> None:
        """Free the run's concurrency slot (its attempts are settled already)."""
        slot, self._slot = self._slot, None
        if slot is not None:
            try:
                await sync_to_async(release_slot)(slot)
            except Exception:
                logger.exception(
                    "releasing a run slot failed", extra={"execution_id": str(self.execution_id)}
                )


def guard_for(*, execution_id: Any, budgets: Sequence[BudgetLimits], registry: Any) -> BudgetGuard | None:
    """The run's guard, or None when no budget applies (then the engine reserves nothing)."""
    if not budgets:
        return None
    return BudgetGuard(
        execution_id=execution_id,
        budgets=budgets,
        cost=registry.cost,
        output_cap=int(settings.MAX_OUTPUT_TOKENS),
    )


# ---------------------------------------------------------------------- admission
def as_application_error(refused: SpendRefused) -> BudgetExceeded:
    return BudgetExceeded(refused.message, retry_after=refused.retry_after, budget=refused.budget)


def precheck(budgets: Sequence[BudgetLimits], now: datetime | None = None) -> None:
    """Refuse (BudgetExceeded, 429) a run that a budget could not admit even one attempt of: exhausted,
    held in full by runs in flight, or at its concurrency limit. One read, before the execution row is
    written. Only a fast path: the reservation before each attempt is what guarantees the limit."""
    if not budgets:
        return
    now = now or timezone.now()
    wanted = {(b.id, period_start(b.period, now)) for b in budgets if b.limits_spend}
    wanted |= {(b.id, EPOCH) for b in budgets if b.max_concurrent is not None}
    if not wanted:
        return
    where = Q()
    for budget_id, start in wanted:
        where |= Q(budget_id=budget_id, period_start=start)
    rows = {(row.budget_id, row.period_start): row for row in BudgetUsage.objects.filter(where)}
    for budget in budgets:
        if budget.max_concurrent is not None:
            slot = rows.get((budget.id, EPOCH))
            if budget.max_concurrent == 0 or (slot is not None and slot.active_runs >= budget.max_concurrent):
                raise as_application_error(concurrency_refusal(budget))
        if not budget.limits_spend:
            continue
        row = rows.get((budget.id, period_start(budget.period, now))) or BudgetUsage()
        limit_units, limit_tokens = budget.limit_units, budget.limit_tokens
        full_usd = limit_units is not None and row.spent_units + row.reserved_units >= limit_units
        full_tokens = limit_tokens is not None and row.spent_tokens + row.reserved_tokens >= limit_tokens
        if full_usd or full_tokens:
            spent_out = (limit_units is not None and row.spent_units >= limit_units) or (
                limit_tokens is not None and row.spent_tokens >= limit_tokens
            )
            raise as_application_error(refusal(budget, now, held=not spent_out))


aprecheck = sync_to_async(precheck)


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


# ---------------------------------------------------------------------- editing budgets
UNSET: Any = object()


def set_budget(
    *,
    user: Any = None,
    agent: Any = None,
    period: str,
    limit_usd: Decimal | None = UNSET,
    limit_tokens: int | None = UNSET,
    max_concurrent: int | None = UNSET,
    name: str = UNSET,
    is_active: bool = UNSET,
) -> tuple[Budget, bool]:
    """Create or change the budget of (user, agent, period): both -> that user on that agent, one -> that
    user or agent, none -> the whole deployment. Arguments left UNSET keep their value. (budget, created)."""
    from django.core.exceptions import ValidationError

    from apps.agents.errors import ApplicationError

    if user is not None and agent is not None:
        scope = BudgetScope.USER_AGENT
    elif user is not None:
        scope = BudgetScope.USER
    elif agent is not None:
        scope = BudgetScope.AGENT
    else:
        scope = BudgetScope.DEPLOYMENT
    with transaction.atomic():
        budget = (
            Budget.objects.select_for_update()
            .filter(scope=scope, user=user, agent=agent, period=period)
            .first()
        )
        created = budget is None
        if budget is None:
            budget = Budget(scope=scope, user=user, agent=agent, period=period)
        changes = {
            "limit_usd": limit_usd,
            "limit_tokens": limit_tokens,
            "max_concurrent": max_concurrent,
            "name": name,
            "is_active": is_active,
        }
        for field, value in changes.items():
            if value is not UNSET:
                setattr(budget, field, value)
        if not created and any(value is not UNSET for value in changes.values()):
            budget.from_default = False  # set by hand now: no longer the settings' copy
        try:
            budget.full_clean()
        except ValidationError as exc:
            fields = {key: [str(m) for m in messages] for key, messages in exc.message_dict.items()}
            raise ApplicationError(
                f"Invalid budget: {', '.join(sorted(fields))}.", code="invalid", fields=fields
            ) from exc
        budget.save()
    logger.info(
        "budget %s %s: usd=%s tokens=%s concurrent=%s",
        budget.label,
        "created" if created else "changed",
        budget.limit_usd,
        budget.limit_tokens,
        budget.max_concurrent,
    )
    return budget, created
