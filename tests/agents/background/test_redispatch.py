"""Re-dispatch: the reaper sends a background run that no worker started again, records and logs each
re-send, gives up after PENDING_MAX_REDISPATCHES (worker_lost), and re-sends nothing while runs wait in the
queue. Without a broker the re-sent row runs in this process (against the fake provider over real HTTP);
with one, the message lands in the test Redis's queue, where no worker reads it."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.agents.models import AgentExecution, ExecutionMode, ExecutionStatus
from apps.agents.services import dispatch, reaper
from apps.agents.services.background import enqueue_execution
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory, ExecutionFactory

S = ExecutionStatus


@pytest.fixture(autouse=True)
def _timing(settings):
    settings.PENDING_REDISPATCH_SECONDS = 60
    settings.PENDING_MAX_REDISPATCHES = 3
    settings.EXECUTION_STALE_SECONDS = 30
    settings.EXECUTION_HEARTBEAT_SECONDS = 5


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="redispatch-agent", preferred_platform="openai", max_retries=0)


def _queued(*, ago: float, mode=ExecutionMode.BACKGROUND, **fields) -> AgentExecution:
    """A pending row queued `ago` seconds ago (created_at is set on insert, so it is moved back after)."""
    row = ExecutionFactory(status=S.PENDING, mode=mode)
    now = timezone.now()
    AgentExecution.objects.filter(pk=row.pk).update(
        created_at=now - timedelta(seconds=ago), deadline_at=now + timedelta(hours=1), **fields
    )
    return AgentExecution.objects.get(pk=row.pk)


async def _terminal(execution_id, limit: float = 20.0) -> AgentExecution:
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        row = await AgentExecution.objects.aget(pk=execution_id)
        if row.is_terminal:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("not terminal in time")


@pytest.mark.django_db(transaction=True)
async def test_an_unstarted_run_is_sent_again_and_runs_once(
    no_redis, fake_registry, fake_openai, agent, alice, caplog
):
    """No broker: the server that queued it died before starting it. The reaper's process takes it over."""
    fake_openai.reply(text="second time lucky")
    execution = await engine.create_pending(agent, {"task": "Say hello"}, alice)  # never sent anywhere
    queued_at = timezone.now() - timedelta(seconds=90)
    await AgentExecution.objects.filter(pk=execution.pk).aupdate(created_at=queued_at)

    with caplog.at_level(logging.WARNING, logger="apps.agents.services.dispatch"):
        report = await sync_to_async(reaper.reap)()
    assert report.redispatched == [str(execution.pk)] and report.total == 0

    row = await _terminal(execution.pk)
    assert (row.status, row.output) == (S.COMPLETED, "second time lucky")
    assert row.redispatch_count == 1 and row.redispatched_at is not None
    assert len(fake_openai.requests) == 1
    record = next(r for r in caplog.records if "sending it again" in r.getMessage())
    assert record.execution_id == str(execution.pk)
    assert "not started 90 s after it was queued" in record.getMessage()


@pytest.mark.django_db
def test_only_background_rows_pending_past_the_threshold_are_sent_again(no_redis, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "_resend", sent.append)  # what is chosen, not how it is sent
    old = _queued(ago=61)
    fresh = _queued(ago=30)
    resent_recently = _queued(
        ago=600, redispatch_count=1, redispatched_at=timezone.now() - timedelta(seconds=5)
    )
    sync_row = _queued(ago=600, mode=ExecutionMode.SYNC)
    running = _queued(ago=600)
    AgentExecution.objects.filter(pk=running.pk).update(status=S.RUNNING, started_at=timezone.now())

    assert reaper.reap().redispatched == [str(old.pk)] == sent
    for row in (fresh, resent_recently, sync_row, running):
        before = row.redispatch_count
        assert AgentExecution.objects.get(pk=row.pk).redispatch_count == before
    assert AgentExecution.objects.get(pk=old.pk).redispatch_count == 1

    # Just re-sent: not again until another PENDING_REDISPATCH_SECONDS have passed.
    assert reaper.reap().redispatched == []
    later = timezone.now() + timedelta(seconds=61)
    assert str(old.pk) in reaper.reap(later).redispatched
    assert AgentExecution.objects.get(pk=old.pk).redispatch_count == 2


@pytest.mark.django_db
def test_a_row_claimed_by_another_reaper_is_not_sent_twice(no_redis, monkeypatch):
    """Two reapers at once: the claim is a conditional UPDATE on the count, so one of them sends."""
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "_resend", sent.append)
    row = _queued(ago=120)
    real_filter = AgentExecution.objects.filter
    raced = []

    def filter_after_a_rival(*args, **kwargs):
        if "redispatch_count" in kwargs and not raced:  # the claim: another reaper claimed it first
            raced.append(True)
            real_filter(pk=row.pk).update(redispatch_count=1, redispatched_at=timezone.now())
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(AgentExecution.objects, "filter", filter_after_a_rival)
    assert dispatch.redispatch(timezone.now()) == []
    assert sent == [] and raced == [True]
    assert AgentExecution.objects.get(pk=row.pk).redispatch_count == 1


@pytest.mark.django_db
def test_a_row_sent_the_most_times_without_starting_is_worker_lost(no_redis, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "_resend", sent.append)
    long_ago = timezone.now() - timedelta(seconds=120)
    given_up = _queued(ago=600, redispatch_count=3, redispatched_at=long_ago)
    once_more = _queued(ago=600, redispatch_count=2, redispatched_at=long_ago)

    report = reaper.reap()
    assert report.lost == [str(given_up.pk)] and report.redispatched == [str(once_more.pk)] == sent
    row = AgentExecution.objects.get(pk=given_up.pk)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
    assert row.error_message == "sent to the workers 4 times; none of them started it"
    assert row.finished_at is not None
    assert AgentExecution.objects.get(pk=once_more.pk).status == S.PENDING


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
async def test_nothing_is_sent_again_while_runs_wait_in_the_queue(own_workers, agent, alice):
    """With a backlog an unstarted row may just be waiting its turn: neither re-sent nor given up. Once the
    queue is empty, the same rows are re-sent (and their message waits in the queue: no worker here)."""
    waiting = await engine.create_pending(agent, {"task": "in the queue"}, alice)
    await enqueue_execution(waiting)  # published to the test Redis; no worker consumes it
    assert await sync_to_async(dispatch.waiting_runs)() == 1
    long_ago = timezone.now() - timedelta(seconds=600)
    await AgentExecution.objects.filter(pk=waiting.pk).aupdate(created_at=long_ago)
    given_up = await engine.create_pending(agent, {"task": "re-sent thrice"}, alice)
    await AgentExecution.objects.filter(pk=given_up.pk).aupdate(
        created_at=long_ago, redispatch_count=3, redispatched_at=long_ago
    )

    report = await sync_to_async(reaper.reap)()
    assert (report.redispatched, report.lost) == ([], [])
    assert (await AgentExecution.objects.aget(pk=given_up.pk)).status == S.PENDING

    await asyncio.to_thread(_purge_run_queue)  # the backlog is gone (its one message with it)
    assert await sync_to_async(dispatch.waiting_runs)() == 0
    report = await sync_to_async(reaper.reap)()
    assert report.redispatched == [str(waiting.pk)] and report.lost == [str(given_up.pk)]
    assert await sync_to_async(dispatch.waiting_runs)() == 1
    await asyncio.to_thread(_purge_run_queue)


def _purge_run_queue() -> None:
    from django.conf import settings

    from config.celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(settings.RUNS_QUEUE)


def test_reaper_passes_have_their_own_queue_and_never_expire(settings):
    """Behind a backlog of runs on a shared queue, with an expiry of one interval, every pass was thrown
    away. Now a pass goes to the maintenance queue, which a worker started without -Q consumes too, and a
    pass that waited (every pool process busy) still runs."""
    from config.celery import app

    route = app.amqp.router.route({}, "apps.agents.tasks.reap_executions_task")
    assert route["queue"].name == settings.MAINTENANCE_QUEUE != settings.RUNS_QUEUE
    assert {queue.name for queue in app.conf.task_queues} == {settings.RUNS_QUEUE, settings.MAINTENANCE_QUEUE}
    entry = app.conf.beat_schedule["reap-executions"]
    assert entry["options"] == {"queue": settings.MAINTENANCE_QUEUE}  # no `expires`
