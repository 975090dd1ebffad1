import threading
from decimal import Decimal

import pytest
from django.db import connection

from apps.agents.errors import IllegalTransition
from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services.state_manager import state_manager
from tests.factories import AgentFactory, ExecutionFactory

S = ExecutionStatus
ALL = [S.PENDING, S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED]
LEGAL = {
    (S.PENDING, S.RUNNING),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),  # a queued run whose message was lost must be able to end (reaper)
}


def _move(execution, target):
    if target == S.RUNNING:
        return state_manager.start_execution(execution)
    if target == S.COMPLETED:
        return state_manager.complete_execution(execution, output="ok")
    if target == S.FAILED:
        return state_manager.fail_execution(execution, code="provider_error", message="boom")
    if target == S.CANCELLED:
        return state_manager.cancel_execution(execution)
    raise AssertionError(target)


@pytest.mark.django_db
@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("target", [S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED])
def test_every_transition_is_legal_or_changes_nothing(source, target):
    execution = ExecutionFactory(status=source, output="before")
    before = AgentExecution.objects.filter(pk=execution.pk).values().get()
    if (source, target) in LEGAL:
        _move(execution, target)
        row = AgentExecution.objects.get(pk=execution.pk)
        assert row.status == target
        assert execution.status == target  # the instance reflects the update without a re-read
    else:
        with pytest.raises(IllegalTransition) as info:
            _move(execution, target)
        assert info.value.current == source
        assert info.value.target == target
        assert AgentExecution.objects.filter(pk=execution.pk).values().get() == before


@pytest.mark.django_db
def test_complete_records_the_whole_outcome():
    execution = ExecutionFactory()
    state_manager.start_execution(execution)
    state_manager.complete_execution(
        execution,
        output={"answer": 42},
        tokens_in=10,
        tokens_out=5,
        cost=Decimal("0.00012"),
        platform="openai",
        model="gpt-4o-mini",
        attempts=[{"platform": "openai", "model": "gpt-4o-mini", "status": "ok", "latency_ms": 3.0}],
        metadata={"k": "v"},
    )
    row = AgentExecution.objects.get(pk=execution.pk)
    assert row.output == {"answer": 42}
    assert (row.input_tokens, row.output_tokens, row.tokens_used) == (10, 5, 15)
    assert row.cost == Decimal("0.00012")
    assert (row.platform_used, row.model_used) == ("openai", "gpt-4o-mini")
    assert row.attempts[0]["status"] == "ok"
    assert row.metadata == {"k": "v"}
    assert row.started_at <= row.finished_at
    assert row.execution_time >= 0


@pytest.mark.django_db
def test_fail_records_code_message_and_partial_output():
    execution = ExecutionFactory(status=S.RUNNING)
    state_manager.fail_execution(
        execution, code="timeout", message="deadline", output="partial", tokens_out=3
    )
    row = AgentExecution.objects.get(pk=execution.pk)
    assert (row.status, row.error_code, row.error_message, row.output, row.output_tokens) == (
        "failed",
        "timeout",
        "deadline",
        "partial",
        3,
    )


@pytest.mark.django_db
def test_sync_runs_are_inserted_running_with_a_deadline():
    agent = AgentFactory(timeout_seconds=30)
    execution = state_manager.create_execution(agent=agent, input_data={"task": "x"}, running=True)
    row = AgentExecution.objects.get(pk=execution.pk)
    assert row.status == "running"
    assert row.started_at and row.heartbeat_at
    assert (row.deadline_at - row.started_at).total_seconds() >= 30


@pytest.mark.django_db
def test_heartbeat_and_cancel_request_only_touch_live_rows():
    live = ExecutionFactory(status=S.RUNNING)
    done = ExecutionFactory(status=S.COMPLETED)
    assert state_manager.heartbeat(live) is True
    assert state_manager.heartbeat(done) is False
    assert state_manager.request_cancel(live) is True
    assert state_manager.request_cancel(done) is False
    assert AgentExecution.objects.get(pk=done.pk).cancel_requested_at is None


# Async ORM calls run on a worker thread with its own connection: the test must not hold a transaction open.
@pytest.mark.django_db(transaction=True)
async def test_async_transitions_follow_the_same_rules():
    from asgiref.sync import sync_to_async

    execution = await sync_to_async(ExecutionFactory)()
    await state_manager.astart_execution(execution)
    await state_manager.acomplete_execution(execution, output="done", tokens_in=1)
    with pytest.raises(IllegalTransition):
        await state_manager.afail_execution(execution, code="provider_error", message="late")
    row = await AgentExecution.objects.aget(pk=execution.pk)
    assert (row.status, row.output, row.error_code) == ("completed", "done", "")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("rounds", [20])
def test_concurrent_complete_and_cancel_exactly_one_wins(rounds):
    """Two real connections race to end the same row; the conditional UPDATE lets exactly one win."""
    for _ in range(rounds):
        execution = ExecutionFactory(status=S.RUNNING)
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def racer(name, action, pk=execution.pk, barrier=barrier, outcomes=outcomes):
            mine = AgentExecution.objects.get(pk=pk)  # each thread has its own connection
            barrier.wait()
            try:
                action(mine)
                outcomes[name] = "won"
            except IllegalTransition:
                outcomes[name] = "lost"
            finally:
                connection.close()

        threads = [
            threading.Thread(
                target=racer, args=("complete", lambda e: state_manager.complete_execution(e, output="x"))
            ),
            threading.Thread(target=racer, args=("cancel", lambda e: state_manager.cancel_execution(e))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes.values()) == ["lost", "won"], outcomes
        final = AgentExecution.objects.get(pk=execution.pk).status
        winner = next(name for name, outcome in outcomes.items() if outcome == "won")
        assert final == {"complete": "completed", "cancel": "cancelled"}[winner]
