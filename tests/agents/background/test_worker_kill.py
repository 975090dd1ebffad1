"""No run left behind: a worker SIGKILLed while holding a run it had received but not started, on Redis and
on RabbitMQ. The surviving worker completes that run, with exactly one provider call.

The doomed worker has one pool process busy with a run whose provider never answers (fake Anthropic,
`hang`) and, with a prefetch multiplier of 2, has already received the next run (fake OpenAI) from the
broker without starting it. Then the whole worker is killed.

- RabbitMQ: the dead consumer's connection closes and the broker requeues its unacked messages at once; the
  survivor receives the held run and completes it. No reaper runs (and its threshold is an hour), so the
  broker alone brought it back.
- Redis: the held message stays in Redis's unacked set until the visibility timeout (an hour here, hours in
  production), so it comes back only because beat's reaper pass, on the maintenance queue of the survivor,
  sends the still-pending row again after PENDING_REDISPATCH_SECONDS (2 s here).

The blocked run, which had started, is never run again: it ends `worker_lost` with its one provider call.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services import dispatch
from apps.agents.services.background import enqueue_execution
from apps.agents.services.execution_engine import execution_engine as engine
from apps.agents.services.reaper import reap
from tests.agents.background.waiting import execution_row, terminal, until
from tests.factories import AgentFactory
from tests.fakes.server import Fault

S = ExecutionStatus
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Longer than the test: a message held by the killed worker never comes back from Redis by itself.
LONG_VISIBILITY = {"CELERY_VISIBILITY_TIMEOUT": 3600}


async def _queue(agent, user, task: str) -> AgentExecution:
    execution = await engine.create_pending(agent, {"task": task}, user)
    await enqueue_execution(execution)
    return execution


async def _hold_a_run_and_die(factory, fake_openai, fake_anthropic, alice, **survivor_env):
    """Returns (blocked, held, survivor) after the doomed worker was SIGKILLed holding `held` unstarted."""
    fake_anthropic.fail(Fault("hang"))
    fake_openai.reply(text="completed by the survivor")
    slow = await sync_to_async(AgentFactory)(owner=alice, preferred_platform="anthropic", max_retries=0)
    fast = await sync_to_async(AgentFactory)(owner=alice, preferred_platform="openai", max_retries=0)
    doomed = await asyncio.to_thread(
        factory.start, pool="prefork", concurrency=1, prefetch_multiplier=2, **LONG_VISIBILITY
    )
    blocked = await _queue(slow, alice, "never answered")

    async def blocking() -> bool:
        return bool(fake_anthropic.requests) and (await execution_row(blocked.pk)).status == S.RUNNING

    await until(blocking)
    held = await _queue(fast, alice, "held by a worker that dies")

    async def received() -> bool:
        return f"[{held.pk}] received" in doomed.log()

    await until(received)
    assert (
        await execution_row(held.pk)
    ).status == S.PENDING  # received, not started: its one process is busy
    assert await sync_to_async(dispatch.waiting_runs)() == 0  # the message is with the worker, not queued

    # The survivor is up before the kill, so it is there when RabbitMQ requeues.
    survivor = await asyncio.to_thread(factory.start, **LONG_VISIBILITY, **survivor_env)
    await asyncio.to_thread(doomed.kill)
    return blocked, held, survivor


async def _blocked_run_ends_worker_lost(blocked) -> AgentExecution:
    async def reaped():
        await sync_to_async(reap)()  # the heartbeat rule: what any reaper pass does
        row = await execution_row(blocked.pk)
        return row if row.is_terminal else None

    return await until(reaped, every=0.5)


async def test_rabbitmq_gives_a_killed_workers_held_run_to_the_survivor(
    rabbitmq, settings, fake_openai, fake_anthropic, alice
):
    settings.PENDING_REDISPATCH_SECONDS = 3600  # this process must not re-send it either
    blocked, held, survivor = await _hold_a_run_and_die(
        rabbitmq, fake_openai, fake_anthropic, alice, PENDING_REDISPATCH_SECONDS=3600
    )
    try:
        row = await terminal(held.pk)
        lost = await _blocked_run_ends_worker_lost(blocked)
    finally:
        await asyncio.to_thread(survivor.stop)
    assert (row.status, row.output) == (S.COMPLETED, "completed by the survivor")
    assert row.redispatch_count == 0  # the broker brought it back, not the reaper
    assert f"[{held.pk}] succeeded" in survivor.log()
    assert len(fake_openai.requests) == 1
    assert (lost.status, lost.error_code) == (S.FAILED, "worker_lost")
    assert len(fake_anthropic.requests) == 1


async def test_redis_held_run_of_a_killed_worker_is_sent_again_by_the_reaper(
    own_workers, fake_openai, fake_anthropic, alice
):
    blocked, held, survivor = await _hold_a_run_and_die(own_workers, fake_openai, fake_anthropic, alice)
    beat = await asyncio.to_thread(own_workers.start_beat, REAPER_INTERVAL_SECONDS=1)
    try:
        row = await terminal(held.pk)
        lost = await terminal(blocked.pk)  # the survivor's reaper passes end it by its stale heartbeat
    finally:
        await asyncio.to_thread(beat.stop)
        await asyncio.to_thread(survivor.stop)
    assert (row.status, row.output) == (S.COMPLETED, "completed by the survivor")
    assert row.redispatch_count >= 1 and row.redispatched_at is not None  # re-sent by a reaper pass
    assert f"[{held.pk}] succeeded" in survivor.log()
    assert "apps.agents.tasks.reap_executions_task" in survivor.log()  # from the maintenance queue
    assert len(fake_openai.requests) == 1
    assert (lost.status, lost.error_code) == (S.FAILED, "worker_lost")
    assert len(fake_anthropic.requests) == 1
