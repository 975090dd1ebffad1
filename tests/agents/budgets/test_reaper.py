"""The reaper releases reservations that no live process will settle (the real-worker case is in
tests/agents/background/test_budget_release.py); a late settlement never releases twice. A lost attempt's
usage is unknown and the provider may have billed it: it is settled at its reserved worst case, counted as
estimated."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.budget_selectors import usage_for_user
from apps.agents.models import Budget, BudgetUsage
from apps.agents.services import budgets as budget_services
from apps.agents.services.budget_ledger import Release, apply
from apps.agents.services.reaper import reap
from tests.factories import ExecutionFactory


def hold_tokens(execution, limits, *, units: int = 0, tokens: int):  # type: ignore[no-untyped-def]
    claims = budget_services.claims_for(
        limits, units=units, tokens=tokens, spend=True, slot=False, now=timezone.now()
    )
    holds, _ = budget_services.hold(claims, execution_id=execution.pk)
    return holds["spend"]


@pytest.mark.django_db
def test_a_timed_out_runs_reservation_waits_for_its_process_then_is_settled_at_its_worst_case(
    alice, settings
):
    settings.EXECUTION_STALE_SECONDS = 30
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    limits = budget_services.applicable_budgets(user=alice, agent=None)
    execution = ExecutionFactory(status="failed", user=alice)
    held = hold_tokens(execution, limits, units=70, tokens=400)
    assert reap().released == 0  # ended just now: its process may still settle it
    later = timezone.now() + timedelta(seconds=31)
    assert reap(now=later).released == 1
    usage = BudgetUsage.objects.get(budget=budget)
    assert (usage.reserved_tokens, usage.reserved_units) == (0, 0)
    # What the provider may have billed is not known: the worst case is spent, and marked as estimated.
    assert (usage.spent_tokens, usage.spent_units) == (400, 70)
    assert (usage.estimated_tokens, usage.estimated_units) == (400, 70)
    (shown,) = usage_for_user(user=alice)  # GET /api/v1/usage/ says which part of the spend is estimated
    assert (shown.spent_tokens, shown.estimated_tokens, shown.estimated_usd) == (
        400,
        400,
        usage.estimated_usd,
    )
    # The process settles late: nothing is released twice, nothing goes negative.
    assert apply([Release(held, spent_units=0, spent_tokens=100)]).released == [False]
    usage.refresh_from_db()
    assert (usage.reserved_tokens, usage.spent_tokens, usage.estimated_tokens) == (0, 400, 400)


@pytest.mark.django_db
def test_a_settled_attempt_is_not_estimated(alice):
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    limits = budget_services.applicable_budgets(user=alice, agent=None)
    held = hold_tokens(ExecutionFactory(status="running", user=alice), limits, tokens=400)
    assert apply([Release(held, spent_units=0, spent_tokens=100)]).released == [True]
    usage = BudgetUsage.objects.get(budget=budget)
    assert (usage.reserved_tokens, usage.spent_tokens, usage.estimated_tokens) == (0, 100, 0)
