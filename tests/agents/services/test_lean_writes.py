"""services/db.py's lean INSERT and conditional UPDATE write exactly what save() and update() write."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services.db import insert_row, update_row
from apps.agents.services.state_manager import state_manager
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

COLUMNS = [f.attname for f in AgentExecution._meta.local_concrete_fields if f.attname != "id"]


def built(agent, user):
    return state_manager.new_execution(
        agent=agent,
        input_data={"task": "é ünïcode", "nested": {"list": [1, 2.5, None, True]}},
        user=user,
        context={"metadata": {"k": "v"}},
        running=True,
        request_hash="abc",
        metadata={"m": 1},
    )


def test_insert_row_writes_the_row_save_would(alice):
    agent = AgentFactory(owner=alice)
    by_save, lean = built(agent, alice), built(agent, alice)
    by_save.save(force_insert=True)

    insert_row(lean)

    assert lean._state.adding is False
    saved, inserted = (AgentExecution.objects.values(*COLUMNS).get(pk=e.pk) for e in (by_save, lean))
    # created_at / updated_at / started_at come from each row's own clock reading.
    for row in (saved, inserted):
        for name in ("created_at", "updated_at", "started_at", "heartbeat_at", "deadline_at"):
            assert row.pop(name) is not None
    assert saved == inserted
    assert inserted["input_data"] == {"task": "é ünïcode", "nested": {"list": [1, 2.5, None, True]}}


def test_a_conditional_insert_writes_the_same_row_when_its_condition_holds_and_nothing_when_not(alice):
    """insert_row(only_if=...) is INSERT ... SELECT ... WHERE: on PostgreSQL every value is cast to its
    column's type there, so the row must come out exactly as save() writes it."""
    agent = AgentFactory(owner=alice)
    by_save, lean, refused = built(agent, alice), built(agent, alice), built(agent, alice)
    by_save.save(force_insert=True)

    assert insert_row(lean, only_if=("1 = %s", [1])) is True
    assert insert_row(refused, only_if=("1 = %s", [2])) is False
    assert refused._state.adding is True
    assert not AgentExecution.objects.filter(pk=refused.pk).exists()
    saved, inserted = (AgentExecution.objects.values(*COLUMNS).get(pk=e.pk) for e in (by_save, lean))
    for row in (saved, inserted):
        for name in ("created_at", "updated_at", "started_at", "heartbeat_at", "deadline_at"):
            assert row.pop(name) is not None
    assert saved == inserted


def test_update_row_is_a_conditional_update_returning_the_rows_changed(alice):
    execution = state_manager.create_execution(agent=AgentFactory(owner=alice), input_data={}, running=True)
    finished = timezone.now() + timedelta(seconds=1)
    values = {
        "status": ExecutionStatus.COMPLETED,
        "output": {"answer": [1, "two"]},
        "cost": Decimal("0.0000012345"),
        "attempts": [{"platform": "openai", "status": "ok"}],
        "finished_at": finished,
        "model_used": "gpt-4o-mini",
    }
    running = {"status": [ExecutionStatus.RUNNING]}

    assert update_row(AgentExecution, execution.pk, values, where_in={"status": ["pending"]}) == 0
    AgentExecution.objects.filter(pk=execution.pk).update(cancel_requested_at=timezone.now())
    assert (
        update_row(AgentExecution, execution.pk, values, where_in=running, where_null=["cancel_requested_at"])
        == 0
    )
    AgentExecution.objects.filter(pk=execution.pk).update(cancel_requested_at=None)
    assert (
        update_row(AgentExecution, execution.pk, values, where_in=running, where_null=["cancel_requested_at"])
        == 1
    )

    row = AgentExecution.objects.get(pk=execution.pk)
    assert (row.status, row.output, row.cost, row.attempts, row.finished_at, row.model_used) == (
        ExecutionStatus.COMPLETED,
        {"answer": [1, "two"]},
        Decimal("0.0000012345"),
        [{"platform": "openai", "status": "ok"}],
        finished,
        "gpt-4o-mini",
    )
    # None is SQL NULL, as with update().
    assert update_row(AgentExecution, execution.pk, {"output": None}) == 1
    assert AgentExecution.objects.filter(pk=execution.pk, output__isnull=True).exists()


def _mark(slug: str) -> tuple[str, list[object]]:
    return ("UPDATE agents_agentexecution SET error_message = %s WHERE agent_slug = %s", ["marked", slug])


def test_update_row_writes_its_along_statements_even_when_it_changes_no_row(alice):
    # A run's last budget settlement is written with its outcome and must commit even when another process
    # ended the row first (the UPDATE then changes nothing, and the transition is reported illegal).
    execution = state_manager.create_execution(agent=AgentFactory(owner=alice), input_data={}, running=True)
    other = state_manager.create_execution(agent=AgentFactory(owner=alice), input_data={}, running=True)
    values = {"status": ExecutionStatus.COMPLETED}
    pending = {"status": [ExecutionStatus.PENDING]}

    assert (
        update_row(
            AgentExecution, execution.pk, values, where_in=pending, along=lambda: [_mark(other.agent_slug)]
        )
        == 0
    )

    assert AgentExecution.objects.get(pk=other.pk).error_message == "marked"
    assert AgentExecution.objects.get(pk=execution.pk).status == ExecutionStatus.RUNNING


def test_update_row_and_its_along_statements_fail_together(alice):
    execution = state_manager.create_execution(agent=AgentFactory(owner=alice), input_data={}, running=True)
    other = state_manager.create_execution(agent=AgentFactory(owner=alice), input_data={}, running=True)

    # (A savepoint: the test runs in a transaction, which PostgreSQL would otherwise leave aborted.)
    with pytest.raises(DatabaseError), transaction.atomic():
        update_row(
            AgentExecution,
            execution.pk,
            {"status": ExecutionStatus.COMPLETED},
            along=lambda: [_mark(other.agent_slug), ("UPDATE no_such_table SET x = 1", [])],
        )

    assert AgentExecution.objects.get(pk=other.pk).error_message == ""
    assert AgentExecution.objects.get(pk=execution.pk).status == ExecutionStatus.RUNNING
