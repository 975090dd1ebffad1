"""Background runs on real Celery worker processes over real Redis, sharing the test database.

The test process plays the API server: it creates and queues executions, reads their events, cancels them;
the worker (another process) runs them against the fake providers, which record every request it makes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import aclosing
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.agents.models import Agent, AgentExecution, ExecutionStatus
from apps.agents.services.background import enqueue_execution, request_cancel
from apps.agents.services.conversation_lock import ConversationBusy
from apps.agents.services.events_bus import subscribe
from apps.agents.services.execution_engine import execution_engine as engine
from apps.agents.services.idempotency import request_hash
from apps.agents.services.reaper import reap
from apps.agents.tasks import reap_executions_task, run_execution_task
from tests.agents.background.waiting import execution_row, terminal, until
from tests.factories import AgentFactory, ConversationFactory
from tests.fakes.server import Fault, Reply

S = ExecutionStatus
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="bg-worker-agent", preferred_platform="openai", max_retries=0)


async def _status_is(execution_id, status) -> bool:
    return (await execution_row(execution_id)).status == status


async def _requests(fake, n: int = 1) -> bool:
    return len(fake.requests) >= n


async def _logged(process, text: str) -> bool:
    return text in process.log()


async def _queue(agent, alice, task: str = "Say hello", **kwargs) -> AgentExecution:
    execution = await engine.create_pending(agent, {"task": task}, alice, **kwargs)
    await enqueue_execution(execution)
    return execution


async def _events(execution_id, after: int = 0, limit: int | None = None):
    got = []
    async with aclosing(subscribe(str(execution_id), after, poll_seconds=0.2)) as events:
        async for event in events:
            got.append(event)
            if limit is not None and len(got) >= limit:
                break
    return got


async def test_a_queued_run_is_completed_by_the_worker(worker, fake_openai, agent, alice):
    fake_openai.reply(text="done by a worker", input_tokens=100, output_tokens=20)
    execution = await _queue(agent, alice)
    assert execution.status == S.PENDING
    row = await terminal(execution.pk)
    assert (row.status, row.output, row.mode) == (S.COMPLETED, "done by a worker", "background")
    assert (row.input_tokens, row.output_tokens) == (100, 20) and row.cost > 0
    assert row.started_at is not None and row.heartbeat_at is not None
    status = await engine.get_execution_status(execution.pk)
    assert status["status"] == "completed" and status["output"] == "done by a worker"
    assert len(fake_openai.requests) == 1
    assert fake_openai.requests[0].headers["authorization"].endswith("SECRET-1234567890")


async def test_events_resume_after_last_event_id_without_gaps_or_duplicates(
    worker, fake_openai, agent, alice
):
    words = [f"w{i}" for i in range(30)]
    fake_openai.reply(Reply(text=" ".join(words), chunk_delay=0.03))
    execution = await _queue(agent, alice)

    first = await _events(execution.pk, 0, limit=6)  # a client that drops after six events...
    last_seen = first[-1].seq
    rest = await _events(execution.pk, last_seen)  # ...and reconnects with Last-Event-ID: <last_seen>
    seen = first + rest
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0].name == "execution.created" and seen[-1].name == "execution.completed"
    assert "".join(e.data["text"] for e in seen if e.name == "output.delta") == " ".join(words)

    # A client that connects after the end gets the whole record, then the stream closes.
    await terminal(execution.pk)
    assert await _events(execution.pk, 0) == seen
    assert await _events(execution.pk, len(seen) - 2) == seen[-2:]


async def test_cancel_from_another_process_stops_the_run_on_the_worker(worker, fake_openai, agent, alice):
    fake_openai.fail(Fault("hang"))
    execution = await _queue(agent, alice)
    await until(lambda: _requests(fake_openai))
    await until(lambda: _status_is(execution.pk, S.RUNNING))

    assert await request_cancel(execution.pk)  # this process does not hold the run: flag + notice

    row = await terminal(execution.pk)
    assert (row.status, row.error_code) == (S.CANCELLED, "cancelled_by_user")
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect, 10)  # the upstream request was closed
    assert "cancel notice: stopping" in worker.log()  # stopped by the notice, not by the next poll
    events = await _events(execution.pk, 0)
    assert events[-1].name == "execution.cancelled"


async def test_concurrent_identical_requests_make_one_run(worker, fake_openai, agent, alice):
    fake_openai.fail(Fault("slow_first_byte", delay=0.5))
    fake_openai.reply(text="exactly once")
    body = {"input_data": {"task": "Say hello"}, "background": True}
    kwargs = {"idempotency_key": "retry-me", "request_hash": request_hash(body)}

    first, second = await asyncio.gather(_queue(agent, alice, **kwargs), _queue(agent, alice, **kwargs))

    assert first.pk == second.pk
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert (await terminal(first.pk)).output == "exactly once"
    again = await _queue(agent, alice, **kwargs)  # a retry after the end: same execution, nothing queued
    assert again.pk == first.pk
    assert await AgentExecution.objects.acount() == 1
    assert len(fake_openai.requests) == 1


async def test_a_busy_conversation_refuses_a_second_run_with_409(worker, fake_registry, fake_openai, alice):
    conversation = await sync_to_async(ConversationFactory)(owner=alice, agent__preferred_platform="openai")
    agent = await Agent.objects.aget(pk=conversation.agent_id)
    context = {"conversation_id": str(conversation.pk)}
    fake_openai.fail(Fault("slow_first_byte", delay=1.5))
    fake_openai.reply(text="first answer")
    first = await _queue(agent, alice, "first", context=context)
    with pytest.raises(ConversationBusy) as info:
        await engine.execute_agent(agent, {"task": "second"}, alice, context)
    assert (info.value.status, info.value.code) == (409, "conversation_busy")
    assert (await terminal(first.pk)).status == S.COMPLETED
    fake_openai.reply(text="second answer")
    assert (await engine.execute_agent(agent, {"task": "second"}, alice, context)).output == "second answer"
    assert len(fake_openai.requests) == 2


async def test_redelivery_of_a_finished_run_is_a_no_op(worker, fake_openai, agent, alice):
    fake_openai.reply(text="once")
    execution = await _queue(agent, alice)
    await terminal(execution.pk)
    await asyncio.to_thread(
        run_execution_task.apply_async, args=[str(execution.pk)]
    )  # the same message again
    await until(lambda: _logged(worker, f"{execution.pk} is already completed"))
    assert len(fake_openai.requests) == 1


async def test_the_reaper_task_fails_an_artificially_stale_run(worker, agent, alice):
    execution = await engine.create_pending(agent, {"task": "lost"}, alice)
    long_ago = timezone.now() - timedelta(minutes=10)
    await AgentExecution.objects.filter(pk=execution.pk).aupdate(
        status=S.RUNNING, started_at=long_ago, heartbeat_at=long_ago
    )
    await asyncio.to_thread(reap_executions_task.delay)
    row = await terminal(execution.pk)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")


async def test_celery_beat_schedules_the_reaper(worker, broker, agent, alice):
    """`make beat`: the periodic reaper pass reaches a worker and ends a run whose worker is gone."""
    execution = await engine.create_pending(agent, {"task": "lost"}, alice)
    long_ago = timezone.now() - timedelta(minutes=10)
    await AgentExecution.objects.filter(pk=execution.pk).aupdate(
        status=S.RUNNING, started_at=long_ago, heartbeat_at=long_ago
    )
    beat = await asyncio.to_thread(broker.start_beat, REAPER_INTERVAL_SECONDS=1)
    try:
        row = await terminal(execution.pk)
        # Beat sent the pass and the worker ran it. Waited for, not just read once: this process may have an
        # in-process runner (started by an earlier test) whose own reaper can end the row first, and beat
        # would then be stopped before its first tick.
        await until(lambda: _logged(beat, "Sending due task reap-executions"))
        await until(lambda: _logged(worker, "apps.agents.tasks.reap_executions_task"))
    finally:
        await asyncio.to_thread(beat.stop)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")


# ---------------------------------------------------------------- tests with workers of their own (last:
# they stop the shared worker, which the next test would have to start again)


async def test_cancel_of_a_queued_run_never_reaches_the_provider(own_workers, fake_openai, agent, alice):
    execution = await _queue(agent, alice)  # no worker running yet
    assert await request_cancel(execution.pk)
    assert (await execution_row(execution.pk)).status == S.CANCELLED
    process = await asyncio.to_thread(own_workers.start)
    try:
        await until(lambda: _logged(process, "already cancelled"))
    finally:
        await asyncio.to_thread(process.stop)
    assert fake_openai.requests == []


async def test_sigkill_mid_run_ends_terminal_and_is_never_billed_twice(
    own_workers, fake_openai, agent, alice
):
    """The worker dies during the provider call. Its unacked message is handed to the next worker after the
    visibility timeout; that worker must not call the provider again (the first call may have been billed):
    the run ends `worker_lost`, found by the redelivery itself (or by the reaper), never stuck."""
    fake_openai.fail(Fault("slow_first_byte", delay=120))
    doomed = await asyncio.to_thread(own_workers.start, pool="solo", concurrency=1)
    execution = await _queue(agent, alice)
    await until(lambda: _requests(fake_openai))
    await until(lambda: _status_is(execution.pk, S.RUNNING))

    await asyncio.to_thread(doomed.kill)

    successor = await asyncio.to_thread(own_workers.start)
    try:
        row = await terminal(execution.pk, limit=90)
        log = successor.log()
    finally:
        await asyncio.to_thread(successor.stop)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
    # Who ends it first depends on timing: the redelivered message (the successor logs it), or a reaper (the
    # successor's, or the in-process runner's that an earlier test in this process may have started).
    redelivered = "was lost by its worker; not re-running it" in log
    assert redelivered or "was lost" in row.error_message, (row.error_message, log[-2000:])
    assert len(fake_openai.requests) == 1  # either way the provider was not called a second time
    assert (row.cost, row.output_tokens) == (0, 0)
    events = await _events(execution.pk, 0)
    assert events[0].name == "execution.created" and events[-1].name == "execution.failed"


async def test_a_killed_pool_process_is_redelivered_at_once_and_never_run_twice(
    own_workers, fake_openai, agent, alice
):
    """`make worker` runs a prefork pool. When a pool process dies mid-run, the main process rejects the
    message at once (reject_on_worker_lost) and another pool process receives it while the row is still
    `running` with a recent heartbeat: it must not start the run again. The row then stops heartbeating and
    the reaper (beat, here run by the test) ends it `worker_lost`."""
    fake_openai.fail(Fault("slow_first_byte", delay=120))
    worker = await asyncio.to_thread(own_workers.start, pool="prefork", concurrency=2)
    try:
        execution = await _queue(agent, alice)
        await until(lambda: _requests(fake_openai))
        await until(lambda: _status_is(execution.pk, S.RUNNING))
        for pid in worker.pool_processes():
            os.kill(pid, signal.SIGKILL)

        async def redelivered() -> bool:
            log = worker.log()
            return "not starting it twice" in log or "not re-running it" in log

        await until(redelivered)

        async def reaped():
            await sync_to_async(reap)()  # what beat does every REAPER_INTERVAL_SECONDS
            row = await execution_row(execution.pk)
            return row if row.is_terminal else None

        row = await until(reaped, every=0.5)
    finally:
        await asyncio.to_thread(worker.stop)
    assert (row.status, row.error_code) == (S.FAILED, "worker_lost")
    assert "WorkerLostError" in worker.log()
    assert len(fake_openai.requests) == 1
