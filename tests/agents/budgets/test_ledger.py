"""The ledger's steps: a hold changes every budget window it needs or none of them, a run's slot is taken in
the same statement, and each step (a hold with the previous attempt's settlement, the run's close) is one
round trip to PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.agents.engine.spend import SpendRefused
from apps.agents.models import Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import EPOCH
from apps.agents.services import budgets as budget_services
from apps.agents.services.budget_ledger import Release, apply
from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db


def claims(limits, *, tokens: int, units: int = 0, slot: bool = False):  # type: ignore[no-untyped-def]
    return budget_services.claims_for(
        limits, units=units, tokens=tokens, spend=True, slot=slot, now=timezone.now()
    )


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements sent, without the savepoints of the test's own transaction."""
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"].upper()]


def test_a_hold_that_one_budget_refuses_changes_no_budget(alice):
    agent = AgentFactory(owner=alice)
    roomy = Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    tight = Budget.objects.create(scope="agent", agent=agent, period="month", limit_tokens=300)
    limits = budget_services.applicable_budgets(user=alice, agent=agent)
    execution = ExecutionFactory(status="running", user=alice)
    first, _ = budget_services.hold(claims(limits, tokens=200), execution_id=execution.pk)
    with pytest.raises(SpendRefused) as refused:
        budget_services.hold(claims(limits, tokens=200), execution_id=execution.pk)
    assert tight.label in str(refused.value) and "held by runs in flight" in str(refused.value)
    # The roomy budget could afford it, but the hold is all or nothing: neither window moved.
    assert BudgetUsage.objects.get(budget=roomy).reserved_tokens == 200
    assert BudgetUsage.objects.get(budget=tight).reserved_tokens == 200
    assert BudgetReservation.objects.count() == 1
    assert apply([Release(first["spend"], 0, 150)]).released == [True]
    assert BudgetUsage.objects.get(budget=tight).spent_tokens == 150


def test_a_total_budget_holds_its_spend_and_a_run_slot_on_one_row(alice):
    budget = Budget.objects.create(
        scope="user", user=alice, period="total", limit_usd=Decimal("1"), max_concurrent=1
    )
    limits = budget_services.applicable_budgets(user=alice, agent=None)
    execution = ExecutionFactory(status="running", user=alice)
    holds, _ = budget_services.hold(claims(limits, tokens=10, units=5, slot=True), execution_id=execution.pk)
    row = BudgetUsage.objects.get(budget=budget)
    assert row.period_start == EPOCH
    assert (row.reserved_units, row.reserved_tokens, row.active_runs) == (5, 10, 1)
    with pytest.raises(SpendRefused, match="allows 1 runs at once"):
        budget_services.hold(claims(limits, tokens=1, slot=True), execution_id=execution.pk)
    apply([Release(holds["spend"], 4, 8), Release(holds["slot"])])
    row.refresh_from_db()
    assert (row.reserved_units, row.spent_units, row.spent_tokens, row.active_runs) == (0, 4, 8, 0)


def test_each_step_is_one_round_trip_on_postgresql(alice):
    agent = AgentFactory(owner=alice)
    Budget.objects.create(scope="user", user=alice, period="day", limit_usd=Decimal("5"), max_concurrent=2)
    Budget.objects.create(scope="agent", agent=agent, period="month", limit_tokens=10_000)
    Budget.objects.create(scope="deployment", period="total", limit_usd=Decimal("50"))
    limits = budget_services.applicable_budgets(user=alice, agent=agent)
    execution = ExecutionFactory(status="running", user=alice)
    postgres = connection.vendor == "postgresql"
    # A window's first hold also creates its row: once per budget and period, not measured here.
    created, _ = budget_services.hold(claims(limits, tokens=1, slot=True), execution_id=execution.pk)
    apply([Release(created["spend"]), Release(created["slot"])])
    with CaptureQueriesContext(connection) as first:  # three spend windows and a run slot
        holds, _ = budget_services.hold(
            claims(limits, tokens=100, units=9, slot=True), execution_id=execution.pk
        )
    with CaptureQueriesContext(connection) as second:  # the first attempt's settlement and the next hold
        again, released = budget_services.hold(
            claims(limits, tokens=100, units=9),
            execution_id=execution.pk,
            releases=[Release(holds["spend"], 3, 50)],
        )
    with CaptureQueriesContext(connection) as close:  # the last settlement and the slot
        assert apply([Release(again["spend"], 3, 50), Release(holds["slot"])]).released == [True, True]
    assert released == [True]
    # SQLite has no round trips (it runs in the process) and no data-modifying CTEs: one statement each, in
    # one transaction.
    counts = [len(statements(queries)) for queries in (first, second, close)]
    assert counts == ([1, 1, 1] if postgres else [3, 4, 4])
    for row in BudgetUsage.objects.all():
        assert (row.reserved_units, row.reserved_tokens, row.active_runs) == (0, 0, 0)
    assert BudgetReservation.objects.count() == 0


def test_a_budget_deleted_during_a_run_refuses_its_hold_instead_of_failing(alice):
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    limits = budget_services.applicable_budgets(user=alice, agent=None)  # the run read it
    budget.delete()  # ... and an administrator deletes it (its windows go with it)
    execution = ExecutionFactory(status="running", user=alice)
    with pytest.raises(SpendRefused):  # a 429 for the run, not an IntegrityError (a 500)
        budget_services.hold(claims(limits, tokens=10), execution_id=execution.pk)
    assert BudgetUsage.objects.count() == 0 and BudgetReservation.objects.count() == 0
