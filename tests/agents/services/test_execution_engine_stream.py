"""Streamed and background runs through the ExecutionEngine: fallback only before the first token, exact
streamed usage, and real cancellation (the fake provider sees the connection close)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings
from django.utils import timezone

from apps.agents.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
    PlatformFallback,
)
from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services.execution_engine import execution_engine as engine
from apps.platforms.base import Usage
from apps.platforms.pricing import Pricing
from tests.factories import AgentFactory
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test, or PostgreSQL
    refuses to drop the test database at the end ("being accessed by other users")."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


LONG = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, preferred_platform="openai", model="gpt-4o-mini", max_retries=0)


async def until(condition, attempts: int = 500) -> None:
    """Wait (up to ~5 s) for something another thread does, e.g. the fake server receiving a request."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def execution_of(events) -> AgentExecution:
    return await AgentExecution.objects.aget(pk=events[0].execution_id)


async def test_a_stream_yields_created_deltas_completed_with_exact_usage_and_cost(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(text="Hello streaming world", input_tokens=42, output_tokens=9)

    events = [e async for e in engine.execute_streaming(agent, {"task": "hi"}, alice)]

    assert isinstance(events[0], ExecutionCreated)
    assert [e.text for e in events if isinstance(e, OutputDelta)] == ["Hello ", "streaming ", "world"]
    assert isinstance(events[-1], ExecutionCompleted)
    body = events[-1].data()
    assert (body["output"], body["execution_id"], body["tokens_used"]) == (
        "Hello streaming world",
        events[0].execution_id,
        51,
    )
    execution = await execution_of(events)
    assert (execution.status, execution.mode) == (ExecutionStatus.COMPLETED, "stream")
    assert (execution.input_tokens, execution.output_tokens) == (42, 9)
    assert execution.cost == Pricing().cost("openai", "gpt-4o-mini", Usage(42, 9)) > 0
    assert fake_openai.requests[0].body["stream"] is True


async def test_a_stream_cut_after_the_first_token_fails_without_fallback(
    fake_registry, fake_openai, fake_anthropic, alice
):
    agent = await sync_to_async(AgentFactory)(owner=alice, max_retries=2)
    fake_openai.fail(Fault("cut_stream", after_chunks=1))
    fake_openai.reply(text="Partial answer that never ends")

    events = [e async for e in engine.execute_streaming(agent, {"task": "hi"}, alice)]

    assert [type(e) for e in events] == [ExecutionCreated, OutputDelta, ExecutionFailed]
    assert events[-1].error.code == "provider_error"
    assert "after output was sent" in events[-1].error.message
    execution = await execution_of(events)
    assert (execution.status, execution.error_code) == (ExecutionStatus.FAILED, "provider_error")
    assert execution.output == "Partial "  # what the client got is on the record
    assert len(fake_openai.requests) == 1 and fake_anthropic.requests == []
    assert [a["status"] for a in execution.attempts] == ["incomplete_stream"]


async def test_a_stream_failing_before_the_first_token_falls_back(
    fake_registry, fake_openai, fake_anthropic, agent, alice
):
    fake_openai.fail(Fault("status", status=503))
    fake_anthropic.reply(text="Claude answers", input_tokens=20, output_tokens=3)

    events = [e async for e in engine.execute_streaming(agent, {"task": "hi"}, alice)]

    fallback = next(e for e in events if isinstance(e, PlatformFallback))
    assert fallback.data() == {"from": "openai", "to": "anthropic", "reason": "server_error 503"}
    assert "".join(e.text for e in events if isinstance(e, OutputDelta)) == "Claude answers"
    execution = await execution_of(events)
    assert (execution.status, execution.platform_used) == (ExecutionStatus.COMPLETED, "anthropic")
    assert (execution.input_tokens, execution.output_tokens) == (20, 3)
    assert execution.cost == Pricing().cost("anthropic", "claude-3-5-haiku-latest", Usage(20, 3))


async def test_closing_the_stream_mid_way_closes_upstream_and_records_cancelled(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(Reply(text=LONG, chunk_delay=0.2))
    stream = engine.execute_streaming(agent, {"task": "count"}, alice)
    created = await anext(stream)
    first = await anext(stream)
    assert isinstance(first, OutputDelta) and first.text == "one "

    await stream.aclose()

    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    execution = await AgentExecution.objects.aget(pk=created.execution_id)
    assert (execution.status, execution.error_code) == (ExecutionStatus.CANCELLED, "cancelled_by_user")
    assert execution.output == "one "
    assert execution.finished_at is not None


async def test_cancelling_the_consumer_task_closes_upstream_and_records_cancelled(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(Reply(text=LONG, chunk_delay=0.2))
    seen: list = []
    got_output = asyncio.Event()

    async def consume():
        async for event in engine.execute_streaming(agent, {"task": "count"}, alice):
            seen.append(event)
            if isinstance(event, OutputDelta):
                got_output.set()

    task = asyncio.create_task(consume())
    await got_output.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    execution = await AgentExecution.objects.aget(pk=seen[0].execution_id)
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.output.startswith("one ")


async def test_a_sync_run_whose_caller_is_cancelled_is_recorded_cancelled(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.fail(Fault("hang"))
    task = asyncio.create_task(engine.execute_agent(agent, {"task": "x"}, alice))
    await until(lambda: fake_openai.requests)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    execution = await AgentExecution.objects.aget()
    assert (execution.status, execution.error_code) == (ExecutionStatus.CANCELLED, "cancelled_by_user")
    assert [a["status"] for a in execution.attempts] == ["cancelled"]


async def test_cancel_of_a_running_stream_ends_it_with_execution_cancelled(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(Reply(text=LONG, chunk_delay=0.2))
    events = []
    async for event in engine.execute_streaming(agent, {"task": "count"}, alice):
        events.append(event)
        # Once: deltas already queued before the stop may still arrive, and by then the row is cancelled (a
        # second cancel answers False, as it should).
        if isinstance(event, OutputDelta) and sum(isinstance(e, OutputDelta) for e in events) == 1:
            assert await engine.cancel(events[0].execution_id) is True

    assert isinstance(events[-1], ExecutionCancelled)
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    execution = await execution_of(events)
    assert execution.status == ExecutionStatus.CANCELLED and execution.cancel_requested_at is not None
    assert execution.output == "".join(e.text for e in events if isinstance(e, OutputDelta))


async def test_background_run_publishes_every_event_in_order(fake_registry, fake_openai, agent, alice):
    fake_openai.reply(text="queued answer", input_tokens=5, output_tokens=2)
    pending = await engine.create_pending(agent, {"task": "later"}, alice)
    published: list = []

    async def publish(seq, event):
        published.append((seq, event))

    result = await engine.run_execution(pending.pk, publish=publish)

    assert result.success and result.output == "queued answer"
    assert [seq for seq, _ in published] == list(range(1, len(published) + 1))
    assert isinstance(published[0][1], ExecutionCreated) and isinstance(published[-1][1], ExecutionCompleted)
    execution = await AgentExecution.objects.aget(pk=pending.pk)
    assert (execution.status, execution.mode, execution.output_tokens) == ("completed", "background", 2)
    assert execution.started_at is not None and execution.started_at >= execution.created_at
    # Already terminal: a second delivery of the task runs nothing.
    again = await engine.run_execution(pending.pk)
    assert again.output == "queued answer" and len(fake_openai.requests) == 1


async def test_a_cancel_requested_by_another_process_stops_a_background_run(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(Reply(text=LONG, chunk_delay=0.3))
    pending = await engine.create_pending(agent, {"task": "count"}, alice)
    published: list = []

    async def publish(seq, event):
        published.append(event)
        if isinstance(event, OutputDelta) and len(published) == 2:
            # Another process only has the database: set the flag the way its cancel() would.
            await AgentExecution.objects.filter(pk=pending.pk).aupdate(cancel_requested_at=timezone.now())

    result = await engine.run_execution(pending.pk, publish=publish)

    assert result.success is False and result.error.code == "cancelled_by_user"
    assert isinstance(published[-1], ExecutionCancelled)
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    execution = await AgentExecution.objects.aget(pk=pending.pk)
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.output.startswith("one ") and len(execution.output) < len(LONG)


@override_settings(EXECUTION_HEARTBEAT_SECONDS=0.1)
async def test_a_running_execution_heartbeats(fake_registry, fake_openai, agent, alice):
    fake_openai.reply(Reply(text="a b c d", chunk_delay=0.15))
    events = []
    async for event in engine.execute_streaming(agent, {"task": "x"}, alice):
        events.append(event)
        if len(events) == 4:
            execution = await AgentExecution.objects.aget(pk=events[0].execution_id)
            assert execution.heartbeat_at > execution.started_at
    assert isinstance(events[-1], ExecutionCompleted)
