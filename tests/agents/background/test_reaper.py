"""The reaper ends lost and overdue rows, and only those, each with one conditional update."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from apps.agents.models import AgentExecution, Conversation, ExecutionMode, ExecutionStatus
from apps.agents.services import background, reaper
from apps.agents.services.events_bus import BusEvent, get_bus
from tests.factories import ConversationFactory, ExecutionFactory

S = ExecutionStatus
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _timing(settings, no_redis):
    settings.EXECUTION_STALE_SECONDS = 30
    settings.EXECUTION_HEARTBEAT_SECONDS = 5


def _row(status=S.RUNNING, *, mode=ExecutionMode.BACKGROUND, heartbeat_ago=None, deadline_in=600, **extra):
    now = timezone.now()
    row = ExecutionFactory(status=status, mode=mode, **extra)
    fields = {"deadline_at": now + timedelta(seconds=deadline_in)}
    if status == S.RUNNING:
        fields["started_at"] = now - timedelta(seconds=(heartbeat_ago or 0) + 5)
    if heartbeat_ago is not None:
        fields["heartbeat_at"] = now - timedelta(seconds=heartbeat_ago)
    AgentExecution.objects.filter(pk=row.pk).update(**fields)
    return row


def _get(row) -> AgentExecution:
    return AgentExecution.objects.get(pk=row.pk)


def test_background_run_with_a_stale_heartbeat_is_worker_lost():
    lost = _row(heartbeat_ago=120)
    alive = _row(heartbeat_ago=2)
    report = reaper.reap()
    assert report.lost == [str(lost.pk)]
    row = _get(lost)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
    assert "lost" in row.error_message
    assert row.finished_at is not None and row.execution_time > 100
    assert _get(alive).status == S.RUNNING


def test_sync_runs_are_judged_by_deadline_not_heartbeat():
    """The server process heartbeats only background runs; a long sync run must not look lost."""
    sync_run = _row(mode=ExecutionMode.SYNC, heartbeat_ago=120, deadline_in=60)
    assert reaper.reap().total == 0
    assert _get(sync_run).status == S.RUNNING
    AgentExecution.objects.filter(pk=sync_run.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert reaper.reap().lost == [str(sync_run.pk)]
    assert _get(sync_run).error_code == "worker_lost"


def test_running_past_deadline_with_a_fresh_heartbeat_is_timeout():
    overdue = _row(heartbeat_ago=1, deadline_in=-1)
    assert reaper.reap().timed_out == [str(overdue.pk)]
    assert (_get(overdue).status, _get(overdue).error_code) == (S.FAILED, "timeout")


def test_pending_never_picked_up_is_worker_lost():
    queued = _row(S.PENDING, deadline_in=-1)
    fresh = _row(S.PENDING, deadline_in=60)
    assert reaper.reap().lost == [str(queued.pk)]
    row = _get(queued)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
    assert "no worker picked" in row.error_message
    assert _get(fresh).status == S.PENDING


def test_a_row_without_deadline_still_has_one():
    old = ExecutionFactory(status=S.PENDING)
    AgentExecution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=4))
    assert reaper.reap().lost == [str(old.pk)]


def test_lost_run_with_a_cancel_request_ends_cancelled():
    row = _row(heartbeat_ago=120, cancel_requested_at=timezone.now())
    assert reaper.reap().cancelled == [str(row.pk)]
    assert (_get(row).status, _get(row).error_code) == (S.CANCELLED, "cancelled_by_user")


@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED, S.CANCELLED])
def test_terminal_rows_are_never_touched(status):
    row = _row(status, heartbeat_ago=500, deadline_in=-500)
    before = AgentExecution.objects.filter(pk=row.pk).values().get()
    assert reaper.reap().total == 0
    assert AgentExecution.objects.filter(pk=row.pk).values().get() == before


def test_a_row_that_recovers_between_select_and_update_is_left_alone(monkeypatch):
    """The update repeats the selection's condition: a heartbeat (or a finish) in between wins."""
    row = _row(heartbeat_ago=120)
    real_end = reaper._end

    def end_after_a_heartbeat(execution, condition, rule, now):
        AgentExecution.objects.filter(pk=execution.pk).update(heartbeat_at=timezone.now())
        return real_end(execution, condition, rule, now)

    monkeypatch.setattr(reaper, "_end", end_after_a_heartbeat)
    assert reaper.reap().total == 0
    assert _get(row).status == S.RUNNING


def test_a_row_that_finishes_between_select_and_update_keeps_its_outcome(monkeypatch):
    row = _row(heartbeat_ago=120)
    real_end = reaper._end

    def end_after_completion(execution, condition, rule, now):
        AgentExecution.objects.filter(pk=execution.pk).update(status=S.COMPLETED, output="done")
        return real_end(execution, condition, rule, now)

    monkeypatch.setattr(reaper, "_end", end_after_completion)
    assert reaper.reap().total == 0
    assert (_get(row).status, _get(row).output) == (S.COMPLETED, "done")


def test_reaping_frees_the_conversation_and_tells_event_readers():
    conversation = ConversationFactory()
    row = _row(heartbeat_ago=120, conversation=conversation, agent=conversation.agent)
    Conversation.objects.filter(pk=conversation.pk).update(active_execution=row)
    bus = get_bus()
    bus.publish_sync(str(row.pk), BusEvent(0, "execution.created", {}))
    bus.publish_sync(str(row.pk), BusEvent(1, "output.delta", {"text": "half"}))
    reaper.reap()
    assert Conversation.objects.get(pk=conversation.pk).active_execution_id is None
    assert bus.last_seq_sync(str(row.pk)) == 2


def test_management_command_reports_what_it_reaped():
    lost = _row(heartbeat_ago=120)
    out = StringIO()
    call_command("reap_executions", stdout=out)
    assert "reaped 1: 1 worker_lost" in out.getvalue()
    assert str(lost.pk) in out.getvalue()
    assert _get(lost).status == S.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_maintenance_pass_drops_the_connection_a_failed_pass_left_in_a_transaction():
    """The in-process runner's passes share one executor thread's connection. A pass that lost its
    connection while `atomic()` closed leaves it out of autocommit; the next pass starts on a fresh one,
    so what it reaps is committed (before, it wrote into a transaction nobody committed)."""
    lost = _row(heartbeat_ago=120)
    connection.set_autocommit(False)  # what the failed pass left behind

    background.maintenance_pass(roll_up_stats=True)
    connection.close()  # an uncommitted transaction would end here

    row = _get(lost)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
