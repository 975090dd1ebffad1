"""The reaper releases reservations that no live process will settle (the real-worker case is in
tests/agents/background/test_budget_release.py); a late settlement never releases twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.models import Budget, BudgetUsage
from apps.agents.services import budgets as budget_services
from apps.agents.services.reaper import reap
from tests.factories import ExecutionFactory

S_RUNNING, S_FAILED = "running", "failed"


@pytest.mark.django_db
def test_a_timed_out_runs_reservation_waits_for_its_process_then_is_released(alice, settings):
    settings.EXECUTION_STALE_SECONDS = 30
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    limits = budget_services.applicable_budgets(user=alice, agent=None)
    execution = ExecutionFactory(status="failed", user=alice)
    hold = budget_services.reserve(execution_id=execution.pk, budgets=limits, units=0, tokens=400)
    assert reap().released == 0  # ended just now: its process may still settle it
    later = timezone.now() + timedelta(seconds=31)
    assert reap(now=later).released == 1
    assert BudgetUsage.objects.get(budget=budget).reserved_tokens == 0
    # The process settles late: nothing is released twice, nothing goes negative.
    assert budget_services.settle(hold, spent_units=0, spent_tokens=100) is False
    assert BudgetUsage.objects.get(budget=budget).reserved_tokens == 0
