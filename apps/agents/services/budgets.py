"""Spend control (writes): which budgets apply to a run, the engine's SpendGuard that reserves each provider
attempt's worst case and settles it, the admission check, and editing budgets.

    admission (the row's INSERT)        admission_condition(): a budget already exhausted or full -> 429,
                                         nothing written (the INSERT is conditional on it: no read of its own);
                                         AdmissionHold: with the row, in its round trip, the first attempt's
                                         worst case as guessed from the request, and the run's slot
    each attempt                         BudgetGuard.reserve(): the first uses the admission's hold if it
                                         covers the attempt; otherwise one round trip (budget_ledger.hold) that
                                         settles the previous attempt, then holds this one's worst case in every
                                         budget window at once (and the run's concurrency slot, the first time)
    after each attempt                   BudgetGuard.settle(): notes the exact cost (no I/O: it is written by
                                         the next reserve or by close, in the same round trip)
    end of the run                       BudgetGuard.closing(): the last settlement and the slot, written
                                         with the run's outcome (one transaction, one round trip)
    a worker died                        budget_reaper.release_orphaned(): called by the reaper, settles
                                         a lost attempt at its worst case (estimated)

Money is in integer units of 1e-10 USD (models_budget.UNITS_PER_USD).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.agents.engine.spend import AttemptSpec, SpendRefused
from apps.agents.errors import BudgetExceeded
from apps.agents.models import Budget
from apps.agents.models_budget import BudgetPeriod, BudgetScope, ReservationKind, usd_to_units
from apps.agents.services import budget_cache
from apps.agents.services.budget_ledger import (
    USAGE,
    Claim,
    Hold,
    Release,
    apply,
    claims_for,
    hold,
    insert_and_hold,
    release_statements,
    windows_where,
)
from apps.agents.services.budget_rates import Cost, WorstCaseRates, rates_for
from apps.agents.services.budget_reaper import release_orphaned  # noqa: F401 - the service's API
from apps.agents.services.budget_windows import (  # noqa: F401 - the service's API, re-exported
    Applicable,
    BudgetLimits,
    Windows,
    first_refusal,
    period_reset,
    period_start,
    read_applicable,
    read_windows,
    refusal,
)
from apps.agents.services.db import Along, Condition, db_unit
from apps.platforms.base import Usage

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- which budgets apply
def _read(user: Any, agent: Any) -> Applicable:
    authenticated = getattr(user, "is_authenticated", False)
    user_id = user.pk if authenticated else None
    agent_id = getattr(agent, "pk", None) if agent is not None else None

    def read() -> Applicable:
        applicable = read_applicable(user_id=user_id, agent_id=agent_id, now=timezone.now())
        if (
            authenticated
            and BudgetScope.USER not in applicable.scopes
            and default_user_budget(user) is not None
        ):
            # A user without a budget of their own gets one from BUDGET_DEFAULT_USER, written once (their
            # first run) and editable like any other.
            applicable = read_applicable(user_id=user_id, agent_id=agent_id, now=timezone.now())
        return applicable

    return budget_cache.applicable(user_id, agent_id, read)


def applicable_budgets(*, user: Any, agent: Any) -> list[BudgetLimits]:
    """Every active budget that applies to `user` running `agent`, ordered by id (cached, with its limits
    as they are now: services/budget_cache.py)."""
    return list(_read(user, agent).budgets)


aapplicable_budgets = db_unit(applicable_budgets)


def default_budget(user: Any) -> Budget | None:
    """The budget BUDGET_DEFAULT_USER gives a user with none of their own, unsaved (None: no default)."""
    spec = settings.BUDGET_DEFAULT_USER or {}
    if not spec:
        return None
    return Budget(
        scope=BudgetScope.USER,
        user=user,
        period=str(spec.get("period", BudgetPeriod.MONTH)),
        limit_usd=Decimal(str(spec["usd"])) if spec.get("usd") is not None else None,
        limit_tokens=int(spec["tokens"]) if spec.get("tokens") is not None else None,
        max_concurrent=int(spec["max_concurrent"]) if spec.get("max_concurrent") else None,
        from_default=True,
    )


def default_user_budget(user: Any) -> Budget | None:
    """The user's default budget, written at their first run (once: a concurrent first run gets the same)."""
    default = default_budget(user)
    if default is None:
        return None
    fields = ("limit_usd", "limit_tokens", "max_concurrent", "from_default")
    budget, _ = Budget.objects.get_or_create(
        scope=default.scope,
        user=user,
        period=default.period,
        defaults={field: getattr(default, field) for field in fields},
    )
    return budget


# ---------------------------------------------------------------------- the engine's hook
@dataclass(frozen=True, slots=True)
class Reserved:
    """What the guard hands the engine for one attempt: the hold, and what to price the real usage at."""

    hold: Hold | None
    platform: str
    model: str


@dataclass(frozen=True, slots=True)
class _Settled:
    """An attempt's outcome, to be written with the guard's next round trip."""

    reservation: Reserved
    usage: Usage
    cost: Decimal | None


class BudgetGuard:
    """The engine's SpendGuard for one run: prices each attempt's worst case, holds it, settles it.

    Each step is one thread hop and one round trip: a settlement is not written on its own but with the next
    hold (a retry, a fallback, the next model call) or at the end of the run with its outcome, in the same
    transaction (closing()). Until then it stays held at its worst case (milliseconds); if the process dies in
    between, the reaper settles it at that worst case. `held`: what the run's admission held with its row
    (AdmissionHold): the first attempt uses it when it covers that attempt's worst case (no round trip of
    its own), else it is released with the attempt's own hold."""

    def __init__(
        self,
        *,
        execution_id: Any,
        budgets: Sequence[BudgetLimits],
        cost: Cost,
        output_cap: int,
        rates: WorstCaseRates | None = None,
        held: Mapping[str, Hold] | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.budgets = tuple(budgets)
        self.cost = cost
        self.rates = rates or WorstCaseRates(cost)
        self.output_cap = output_cap
        held = held or {}
        self._slot: Hold | None = held.get(ReservationKind.SLOT)
        self._admitted: Hold | None = held.get(ReservationKind.SPEND)
        self._needs_slot = any(b.max_concurrent is not None for b in self.budgets)
        self._spends = any(b.limits_spend for b in self.budgets)
        self._settled: list[_Settled] = []

    def worst_case_units(self, attempt: AttemptSpec) -> int:
        return self.rates.units(attempt.platform, attempt.model, attempt.usage)

    def _take_admitted(self, attempt: AttemptSpec | None = None) -> Hold | None:
        """The admission's hold, once: for `attempt` if it covers its worst case; otherwise noted to be
        released (nothing spent) with the next write."""
        admitted, self._admitted = self._admitted, None
        if admitted is None:
            return None
        if (
            attempt is not None
            and attempt.usage.total_tokens <= admitted.tokens
            and self.worst_case_units(attempt) <= admitted.units
        ):
            return admitted
        self._settled.append(_Settled(Reserved(admitted, "", ""), Usage(), Decimal(0)))
        return None

    async def reserve(self, attempt: AttemptSpec) -> Reserved:
        admitted = self._take_admitted(attempt)
        if admitted is not None:
            return Reserved(admitted, attempt.platform, attempt.model)
        if not self._spends and not (self._needs_slot and self._slot is None) and not self._settled:
            return Reserved(None, attempt.platform, attempt.model)
        settled, self._settled = self._settled, []
        try:
            # A unit of database work (services/db.py): its connection goes back at once, not when the
            # request ends, so a budgeted run holds none while it waits on its provider.
            return await _reserve_unit(self, attempt, settled)
        except SpendRefused:
            raise
        except BaseException:
            self._settled[:0] = settled  # not written: the next step (or close) writes them
            raise

    def _reserve_sync(self, attempt: AttemptSpec, settled: list[_Settled]) -> Reserved:
        claims = claims_for(
            self.budgets,
            units=self.worst_case_units(attempt) if self._spends else 0,
            tokens=attempt.usage.total_tokens,
            spend=self._spends,
            slot=self._needs_slot and self._slot is None,
            now=timezone.now(),
        )
        holds, _ = hold(claims, execution_id=self.execution_id, releases=self._releases(settled))
        self._slot = holds.get(ReservationKind.SLOT, self._slot)
        return Reserved(holds.get(ReservationKind.SPEND), attempt.platform, attempt.model)

    def _releases(self, settled: Sequence[_Settled]) -> list[Release]:
        releases = []
        for item in settled:
            reservation, usage, cost = item.reservation, item.usage, item.cost
            assert reservation.hold is not None
            if cost is None:  # priced here, in the thread: genai-prices costs a third of a millisecond
                cost = (
                    self.cost(reservation.platform, reservation.model, usage)
                    if usage.total_tokens
                    else Decimal(0)
                )
            releases.append(Release(reservation.hold, usd_to_units(cost), usage.total_tokens))
        return releases

    async def settle(self, reservation: Reserved, usage: Usage, cost: Decimal | None = None) -> None:
        """`cost`: what the engine priced the attempt at (an answered one); else priced from `usage` when it
        is written. No I/O: the next reserve() or close() writes it."""
        if reservation.hold is not None:
            self._settled.append(_Settled(reservation, usage, cost))

    def closing(self) -> Along | None:
        """The last settlements and the slot's release as statements for the run's outcome UPDATE to write
        before it, in its transaction and round trip (execution_records.record_outcome): made where that
        write is made, its thread or the event loop (pricing a usage is CPU, no I/O). None: nothing to write. Taken once: close() then has
        nothing left; if that write fails, the reaper releases the reservations, as after a failed close()."""
        self._take_admitted()  # a run that ended before its first attempt
        settled, self._settled = self._settled, []
        slot, self._slot = self._slot, None
        if not settled and slot is None:
            return None
        return lambda: release_statements(self._last_releases(settled, slot))

    async def close(self) -> None:
        """Write the last settlements and free the run's concurrency slot on their own: one round trip."""
        self._take_admitted()
        settled, self._settled = self._settled, []
        slot, self._slot = self._slot, None
        if not settled and slot is None:
            return
        try:
            await _close_unit(self, settled, slot)
        except Exception:  # the reaper releases them; the run's own outcome must not be lost to this
            logger.exception(
                "settling the run's reservations failed", extra={"execution_id": str(self.execution_id)}
            )

    def _close_sync(self, settled: list[_Settled], slot: Hold | None) -> None:
        apply(self._last_releases(settled, slot))  # priced in the unit's thread: pricing a usage is CPU

    def _last_releases(self, settled: list[_Settled], slot: Hold | None) -> list[Release]:
        releases = self._releases(settled)
        if slot is not None:
            releases.append(Release(slot))
        return releases


# Units of database work (services/db.py): the connection goes back as soon as each returns.
_reserve_unit = db_unit(BudgetGuard._reserve_sync)
_close_unit = db_unit(BudgetGuard._close_sync)


def guard_for(
    *,
    execution_id: Any,
    budgets: Sequence[BudgetLimits],
    registry: Any,
    held: Mapping[str, Hold] | None = None,
) -> BudgetGuard | None:
    """The run's guard, or None when no budget applies (then the engine reserves nothing). `held`: what its
    admission held (AdmissionHold)."""
    if not budgets:
        return None
    return BudgetGuard(
        execution_id=execution_id,
        budgets=budgets,
        cost=registry.cost,
        output_cap=int(settings.MAX_OUTPUT_TOKENS),
        rates=rates_for(registry),
        held=held,
    )


# ---------------------------------------------------------------------- admission
def as_application_error(refused: SpendRefused) -> BudgetExceeded:
    return BudgetExceeded(refused.message, retry_after=refused.retry_after, budget=refused.budget)


def admission_condition(budgets: Sequence[BudgetLimits], now: datetime | None = None) -> Condition | None:
    """The condition a run's row is inserted on (None: no budget applies): every budget could admit one
    attempt of it (one token and one unit of money) and has a free concurrency slot, as its windows stand
    when the INSERT runs. No window yet counts as room. Only a fast refusal: the hold before each attempt
    is what guarantees the limit (services/budget_ledger.py)."""
    if not budgets:
        return None
    now = now or timezone.now()
    sql, params = [], []
    for claim in claims_for(budgets, units=1, tokens=1, spend=True, slot=True, now=now):
        key, key_params = windows_where([claim.window])
        fits, fit_params = claim.fits()
        sql.append(f"({key} AND NOT {fits})")
        params += [*key_params, *fit_params]
    return f"NOT EXISTS (SELECT 1 FROM {USAGE} WHERE {' OR '.join(sql)})", params


@dataclass(slots=True)
class AdmissionHold:
    """A run's first hold, written with its row in the INSERT's round trip (budget_ledger.insert_and_hold):
    its first attempt's worst case as guessed from the request (engine/spend.py guess_first_attempt) and
    its concurrency slot. It never refuses the run: when it does not fit (or its window has no row yet) the
    row is written without it and the first attempt holds what it needs before it is sent. `held`: what it
    held, by kind, once written."""

    claims: list[Claim]
    held: dict[str, Hold] = field(default_factory=dict)

    def write(self, execution: Any, insert: tuple[str, Sequence[Any]]) -> bool:
        """services/db.py Write: the INSERT and this hold (if the INSERT wrote the row)."""
        written, self.held = insert_and_hold(insert, self.claims, execution_id=execution.pk)
        return written


def admission_hold(
    budgets: Sequence[BudgetLimits], attempt: AttemptSpec | None, registry: Any
) -> AdmissionHold | None:
    """The hold to write with a run's row (None: no budget applies, or no first attempt was guessed)."""
    if not budgets or attempt is None:
        return None
    spends = any(b.limits_spend for b in budgets)
    claims = claims_for(
        budgets,
        units=rates_for(registry).units(attempt.platform, attempt.model, attempt.usage) if spends else 0,
        tokens=attempt.usage.total_tokens,
        spend=spends,
        slot=any(b.max_concurrent is not None for b in budgets),
        now=timezone.now(),
    )
    return AdmissionHold(claims)


def admission_refusal(budgets: Sequence[BudgetLimits], now: datetime | None = None) -> BudgetExceeded:
    """Why admission_condition refused a run: the first budget that cannot admit it, as its windows show
    now (room freed meanwhile: a refusal of the first budget, held by runs in flight)."""
    now = now or timezone.now()
    smallest = claims_for(budgets, units=1, tokens=1, spend=True, slot=True, now=now)
    refused = first_refusal(smallest, read_windows(budgets, now), now)
    return as_application_error(refused or refusal(budgets[0], now, held=True))


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
