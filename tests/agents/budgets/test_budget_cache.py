"""Which budgets apply to a run is cached (services/budget_cache.py): no query on the hot path, and no change
of a budget missed, in the transaction that makes it and after it commits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.agents.models import Budget
from apps.agents.services import budget_cache
from apps.agents.services.budgets import admission_condition, applicable_budgets
from tests.factories import AgentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("every_auth_cache")]


def labels(user, agent) -> list[str]:  # type: ignore[no-untyped-def]
    return [budget.label for budget in applicable_budgets(user=user, agent=agent)]


def test_the_second_run_reads_its_budgets_without_a_query(alice):
    agent = AgentFactory(owner=alice)
    Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=100)
    first = labels(alice, agent)
    with CaptureQueriesContext(connection) as queries:
        assert labels(alice, agent) == first == ["user alice (day)"]
    assert len(queries) == 0


def test_a_budget_created_changed_or_deleted_applies_to_the_next_run(alice):
    agent = AgentFactory(owner=alice)
    assert labels(alice, agent) == []
    budget = Budget.objects.create(scope="agent", agent=agent, period="month", limit_usd=Decimal("2"))
    assert labels(alice, agent) == [f"agent {agent.agent_id} (month)"]
    budget.limit_usd = Decimal("0.5")
    budget.save()
    assert [b.limit_usd for b in applicable_budgets(user=alice, agent=agent)] == [Decimal("0.5")]
    budget.is_active = False
    budget.save()
    assert labels(alice, agent) == []
    budget.delete()
    assert labels(alice, agent) == []
    Budget.objects.create(scope="deployment", period="day", limit_tokens=5, name="everyone")
    assert labels(alice, agent) == ["everyone"]


@pytest.mark.django_db(transaction=True)
def test_an_entry_read_before_a_change_commits_is_not_used_after_it(alice):
    """The race the second generation closes: a run reads the database while a budget is being created
    (after the signal's first new generation, before the commit) and stores what it read."""
    agent = AgentFactory(owner=alice)
    with transaction.atomic():
        Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=100)
        # Another process's run, now: it cannot see the uncommitted budget.
        budget_cache.applicable(alice.pk, agent.pk, lambda: _nothing())
    assert labels(alice, agent) == ["user alice (day)"]


def _nothing():  # type: ignore[no-untyped-def]
    from apps.agents.services.budget_windows import Applicable

    return Applicable((), (), frozenset(), {})


def test_turned_off_every_run_reads_the_database(alice, settings):
    settings.BUDGET_CACHE_SECONDS = 0
    agent = AgentFactory(owner=alice)
    labels(alice, agent)
    with CaptureQueriesContext(connection) as queries:
        labels(alice, agent)
    assert len(queries) == 1


def test_admission_is_a_condition_only_when_a_budget_applies(alice):
    agent = AgentFactory(owner=alice)
    assert admission_condition(applicable_budgets(user=alice, agent=agent)) is None
    Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=100, max_concurrent=2)
    sql, params = admission_condition(applicable_budgets(user=alice, agent=agent))
    assert sql.startswith("NOT EXISTS (SELECT 1 FROM")
    assert 100 - 1 in params and 2 - 1 in params  # room for one token, and for one more run
