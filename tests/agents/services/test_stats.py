from decimal import Decimal

import pytest

from apps.agents.models import ExecutionStatus
from apps.agents.services.stats import agent_stats
from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db


def test_stats_with_known_numbers():
    agent = AgentFactory()
    other = AgentFactory()
    # Completed run times 1..10 s; p50 = 5.5, p95 = 9.55 by linear interpolation (percentile_cont).
    for seconds in range(1, 11):
        ExecutionFactory(
            agent=agent,
            status=ExecutionStatus.COMPLETED,
            execution_time=float(seconds),
            input_tokens=10,
            output_tokens=5,
            cost=Decimal("0.0000012345"),
        )
    ExecutionFactory(agent=agent, status=ExecutionStatus.FAILED, execution_time=99.0, input_tokens=3)
    ExecutionFactory(agent=agent, status=ExecutionStatus.FAILED)
    ExecutionFactory(agent=agent, status=ExecutionStatus.CANCELLED)
    ExecutionFactory(agent=agent, status=ExecutionStatus.RUNNING)
    ExecutionFactory(agent=other, status=ExecutionStatus.COMPLETED, execution_time=1000.0, input_tokens=999)

    stats = agent_stats(agent)

    assert (stats.total, stats.completed, stats.failed, stats.cancelled, stats.running) == (14, 10, 2, 1, 1)
    assert stats.success_rate == round(10 / 13, 4)
    assert stats.avg_execution_time == pytest.approx(5.5)
    assert stats.p50_execution_time == pytest.approx(5.5)
    assert stats.p95_execution_time == pytest.approx(9.55)
    assert (stats.input_tokens, stats.output_tokens, stats.tokens_used) == (103, 50, 153)
    assert stats.cost == Decimal("0.0000123450")


def test_stats_of_agent_without_runs():
    stats = agent_stats(AgentFactory())
    assert stats.total == 0
    assert stats.success_rate is None
    assert stats.p50_execution_time is None and stats.p95_execution_time is None
    assert stats.cost == Decimal("0")


def test_single_completed_run_is_every_percentile():
    agent = AgentFactory()
    ExecutionFactory(agent=agent, status=ExecutionStatus.COMPLETED, execution_time=2.5)
    stats = agent_stats(agent)
    assert stats.p50_execution_time == stats.p95_execution_time == 2.5
