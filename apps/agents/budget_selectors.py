"""Spend control (reads): the budgets a caller is subject to, with their usage in the current window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q
from django.utils import timezone

from apps.agents.models import Budget, BudgetUsage
from apps.agents.models_budget import EPOCH, BudgetScope, units_to_usd
from apps.agents.services.budgets import default_budget, period_reset, period_start


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget in its current period window: limits, what is spent and held, what remains."""

    id: int | None
    name: str
    scope: str
    user: str | None
    agent: str | None
    period: str
    period_start: datetime
    resets_at: datetime | None
    limit_usd: Decimal | None
    limit_tokens: int | None
    max_concurrent: int | None
    spent_usd: Decimal
    reserved_usd: Decimal
    spent_tokens: int
    reserved_tokens: int
    active_runs: int
    is_active: bool = True
    from_default: bool = False
    #: Of the spend, what was settled at an attempt's worst case because its process died (the reaper).
    estimated_usd: Decimal = Decimal(0)
    estimated_tokens: int = 0

    @property
    def remaining_usd(self) -> Decimal | None:
        if self.limit_usd is None:
            return None
        return max(Decimal(0), self.limit_usd - self.spent_usd - self.reserved_usd)

    @property
    def remaining_tokens(self) -> int | None:
        if self.limit_tokens is None:
            return None
        return max(0, self.limit_tokens - self.spent_tokens - self.reserved_tokens)


def budget_statuses(budgets: Iterable[Budget], now: datetime | None = None) -> list[BudgetStatus]:
    """Each budget with its current window's usage: one query for all of them."""
    now = now or timezone.now()
    budgets = list(budgets)
    if not budgets:
        return []
    where = Q(pk__in=[])
    for budget in budgets:  # an unsaved budget (a user's default, not created yet) has no usage
        if budget.pk is not None:
            where |= Q(budget_id=budget.pk, period_start__in=[period_start(budget.period, now), EPOCH])
    rows = {(row.budget_id, row.period_start): row for row in BudgetUsage.objects.filter(where)}
    result = []
    for budget in budgets:
        start = period_start(budget.period, now)
        window = rows.get((budget.pk, start)) or BudgetUsage()
        slots = rows.get((budget.pk, EPOCH)) or BudgetUsage()
        result.append(
            BudgetStatus(
                id=budget.pk,
                name=budget.label,
                scope=budget.scope,
                user=budget.user.get_username() if budget.user_id else None,
                agent=budget.agent.agent_id if budget.agent_id else None,
                period=budget.period,
                period_start=start,
                resets_at=period_reset(budget.period, start),
                limit_usd=budget.limit_usd,
                limit_tokens=budget.limit_tokens,
                max_concurrent=budget.max_concurrent,
                spent_usd=units_to_usd(window.spent_units),
                reserved_usd=units_to_usd(window.reserved_units),
                spent_tokens=window.spent_tokens,
                reserved_tokens=window.reserved_tokens,
                active_runs=slots.active_runs,
                is_active=budget.is_active,
                from_default=budget.from_default,
                estimated_usd=window.estimated_usd,
                estimated_tokens=window.estimated_tokens,
            )
        )
    return result


def usage_for_user(*, user: Any, now: datetime | None = None) -> list[BudgetStatus]:
    """The budgets that apply to `user`'s runs: the deployment's, their own, theirs on an agent, and those
    of the agents they own. A user with no budget of their own sees the default one (BUDGET_DEFAULT_USER)
    as it will be created at their first run."""
    now = now or timezone.now()
    mine = (
        Q(scope=BudgetScope.DEPLOYMENT)
        | Q(scope__in=[BudgetScope.USER, BudgetScope.USER_AGENT], user=user)
        | Q(scope=BudgetScope.AGENT, agent__owner=user)
    )
    budgets = list(Budget.objects.filter(mine, is_active=True).select_related("user", "agent").order_by("id"))
    default = default_budget(user)
    if default is not None and not any(b.scope == BudgetScope.USER for b in budgets):
        budgets.append(default)  # as it will be created at their first run
    return budget_statuses(budgets, now)


def all_budgets(now: datetime | None = None) -> list[BudgetStatus]:
    """Every budget (staff), with its current usage."""
    return budget_statuses(Budget.objects.select_related("user", "agent").order_by("id")[:1000], now)
