from decimal import Decimal

import pytest

from apps.agents.errors import IllegalTransition
from apps.agents.models import AgentExecution
from apps.agents.services.state_manager import state_manager
from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db


def test_pending_to_running_to_completed_records_outcome():
    execution = ExecutionFactory()
    state_manager.start_execution(execution)
    state_manager.complete_execution(
        execution, output="hi", tokens_in=10, tokens_out=5, cost=Decimal("0.00012"), platform="openai",
        model="gpt-4o-mini", attempts=[{"platform": "openai", "status": "ok"}],
    )
    row = AgentExecution.objects.get(pk=execution.pk)
    assert row.status == "completed"
    assert (row.output, row.input_tokens, row.output_tokens, row.cost) == ("hi", 10, 5, Decimal("0.00012"))
    assert row.started_at and row.finished_at and row.execution_time >= 0


def test_completed_row_never_changes_again():
    execution = ExecutionFactory()
    state_manager.start_execution(execution)
    state_manager.complete_execution(execution, output="done")
    with pytest.raises(IllegalTransition) as info:
        state_manager.cancel_execution(execution)
    assert info.value.current == "completed"
    assert AgentExecution.objects.get(pk=execution.pk).status == "completed"


def test_sync_runs_are_inserted_running():
    agent = AgentFactory()
    execution = state_manager.create_execution(agent=agent, input_data={"task": "x"}, running=True)
    assert AgentExecution.objects.get(pk=execution.pk).status == "running"
