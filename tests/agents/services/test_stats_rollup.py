"""Stats from hourly rollups plus live rows: exact counts and sums whether or not a pass ran, never a row
counted twice, and histogram percentiles within the stated error."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.agents.models import AgentLatencyBucket, AgentStatsHour, ExecutionStatus
from apps.agents.services import stats as stats_module
from apps.agents.services.stats import agent_stats
from apps.agents.services.stats_rollup import RELATIVE_ERROR, bucket_midpoint, bucket_of, roll_up
from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db


def finished(agent, *, status=ExecutionStatus.COMPLETED, ago=timedelta(hours=3), **fields):
    return ExecutionFactory(agent=agent, status=status, finished_at=timezone.now() - ago, **fields)


def make_history(agent):
    for seconds in range(1, 11):
        finished(
            agent,
            execution_time=float(seconds),
            input_tokens=10,
            output_tokens=5,
            cost=Decimal("0.0000012345"),
        )
    finished(
        agent, status=ExecutionStatus.FAILED, execution_time=99.0, input_tokens=3, ago=timedelta(hours=30)
    )
    finished(agent, status=ExecutionStatus.CANCELLED, ago=timedelta(minutes=1))
    ExecutionFactory(agent=agent, status=ExecutionStatus.RUNNING)  # not terminal: stays live


def test_rollup_changes_no_number():
    agent, other = AgentFactory(), AgentFactory()
    make_history(agent)
    finished(other, execution_time=1000.0, input_tokens=999)
    before = agent_stats(agent)

    report = roll_up()

    assert report.executions == 13  # 12 of agent's + other's; the running one stays live
    assert AgentStatsHour.objects.filter(agent=agent).count() == 3  # three distinct hours
    assert agent_stats(agent) == before
    assert before.total == 13 and before.cost == Decimal("0.0000123450")


def test_second_pass_counts_nothing_twice_and_late_rows_are_counted_next_time():
    agent = AgentFactory()
    make_history(agent)
    roll_up()
    assert roll_up().executions == 0

    # A row that commits after the pass with an old finished_at (a slow final write) is still counted.
    finished(agent, execution_time=2.0, input_tokens=1, ago=timedelta(hours=5))
    after_new = agent_stats(agent)
    assert (after_new.total, after_new.completed, after_new.input_tokens) == (14, 11, 104)

    assert roll_up().executions == 1
    assert agent_stats(agent) == after_new


def test_running_row_is_counted_by_the_pass_after_it_ends():
    agent = AgentFactory()
    running = ExecutionFactory(agent=agent, status=ExecutionStatus.RUNNING)
    roll_up()
    assert agent_stats(agent).running == 1
    type(running).objects.filter(pk=running.pk).update(
        status=ExecutionStatus.COMPLETED, execution_time=1.5, finished_at=timezone.now()
    )
    assert roll_up().executions == 1
    stats = agent_stats(agent)
    assert (stats.running, stats.completed, stats.p50_execution_time) == (0, 1, 1.5)
    assert AgentStatsHour.objects.get(agent=agent).completed == 1


def test_histogram_percentiles_within_stated_error(monkeypatch):
    agent = AgentFactory()
    times = [0.05 * 1.07**i for i in range(120)]
    for i, seconds in enumerate(times):
        finished(agent, execution_time=seconds, ago=timedelta(hours=2 + i % 5))
    exact = agent_stats(agent)
    roll_up()
    assert AgentLatencyBucket.objects.filter(agent=agent).exists()
    monkeypatch.setattr(stats_module, "EXACT_PERCENTILES_UP_TO", 10)

    estimated = agent_stats(agent)

    for name in ("p50_execution_time", "p95_execution_time"):
        true, got = getattr(exact, name), getattr(estimated, name)
        assert got != true  # really from the histogram
        assert abs(got - true) / true <= RELATIVE_ERROR + 1e-9, (name, true, got)
    assert estimated.avg_execution_time == pytest.approx(exact.avg_execution_time)


def test_bucket_bounds():
    for seconds in (0.0, 0.001, 0.0123, 1.0, 7.5, 99999.0, 10**7):
        bucket = bucket_of(seconds)
        clamped = min(max(seconds, 1e-3), 1e5)
        assert abs(bucket_midpoint(bucket) - clamped) / clamped <= RELATIVE_ERROR + 1e-9
