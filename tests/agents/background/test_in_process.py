"""Background runs without a broker (the embedded default): the server runs them on its runner thread, with
the same engine, the same events (in-process bus) and the same cancel; plus idempotent retries and the
one-run-per-conversation rule through the engine, against the fake providers over real HTTP."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async

from apps.agents.errors import ApplicationError
from apps.agents.models import Agent, AgentExecution, ExecutionStatus
from apps.agents.services import background
from apps.agents.services.background import enqueue_execution, request_cancel
from apps.agents.services.conversation_lock import ConversationBusy
from apps.agents.services.events_bus import subscribe
from apps.agents.services.execution_engine import execution_engine as engine
from apps.agents.services.idempotency import request_hash
from tests.agents.background.waiting import terminal, until
from tests.factories import AgentFactory, ConversationFactory
from tests.fakes.server import Fault

S = ExecutionStatus
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="bg-agent", preferred_platform="openai", max_retries=0)


async def _status(execution_id) -> str:
    return await AgentExecution.objects.filter(pk=execution_id).values_list("status", flat=True).aget()


async def test_without_a_broker_the_server_runs_it_and_publishes_its_events(
    no_redis, fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(text="one two three")
    execution = await engine.create_pending(agent, {"task": "count"}, alice)
    assert execution.status == S.PENDING
    queued = enqueue_execution(execution)
    await queued  # from async code it is an awaitable
    row = await terminal(execution.pk)
    assert (row.status, row.output, row.mode) == (S.COMPLETED, "one two three", "background")

    async with aclosing(subscribe(str(execution.pk), 0)) as events:
        got = [event async for event in events]
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert got[0].name == "execution.created" and got[-1].name == "execution.completed"
    assert "".join(e.data["text"] for e in got if e.name == "output.delta") == "one two three"
    assert got[-1].data["output"] == "one two three"
    assert len(fake_openai.requests) == 1


async def test_sync_enqueue_from_a_thread_works_too(no_redis, fake_registry, fake_openai, agent, alice):
    fake_openai.reply(text="from a thread")
    execution = await engine.create_pending(agent, {"task": "x"}, alice)
    assert await sync_to_async(enqueue_execution)(execution) is None
    assert (await terminal(execution.pk)).output == "from a thread"


async def test_cancel_of_an_in_process_run_stops_it_and_closes_the_upstream_request(
    no_redis, fake_registry, fake_openai, agent, alice
):
    fake_openai.fail(Fault("hang"))
    execution = await engine.create_pending(agent, {"task": "wait"}, alice)
    await enqueue_execution(execution)
    await until(lambda: _has_requests(fake_openai))
    assert await request_cancel(execution.pk)
    row = await terminal(execution.pk)
    assert (row.status, row.error_code) == (S.CANCELLED, "cancelled_by_user")
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect, 10)
    assert not await request_cancel(execution.pk)  # over: nothing to cancel


async def _has_requests(fake) -> bool:
    return bool(fake.requests)


async def test_cancel_of_a_queued_run_ends_it_and_tells_event_readers(no_redis, agent, alice):
    execution = await engine.create_pending(agent, {"task": "never runs"}, alice)
    reader = asyncio.create_task(_collect(execution.pk))
    await asyncio.sleep(0.1)
    assert await request_cancel(execution.pk)
    assert await _status(execution.pk) == S.CANCELLED
    events = await asyncio.wait_for(reader, 20)
    assert [(e.seq, e.name) for e in events] == [(1, "execution.cancelled")]


async def _collect(execution_id):
    async with aclosing(subscribe(str(execution_id), 0, poll_seconds=0.1)) as events:
        return [event async for event in events]


async def test_a_second_delivery_of_the_same_execution_runs_nothing(
    no_redis, fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(text="once")
    execution = await engine.create_pending(agent, {"task": "x"}, alice)
    results = await asyncio.gather(*(background.run_background(str(execution.pk)) for _ in range(3)))
    # Each saw it pending (and lost the conditional start), running elsewhere, or finished: one run.
    assert set(results) <= {S.COMPLETED, S.RUNNING}
    assert len(fake_openai.requests) == 1
    assert await background.run_background(str(execution.pk)) == S.COMPLETED  # a late redelivery: no-op
    assert len(fake_openai.requests) == 1


# ---------------------------------------------------------------- idempotent retries through the engine


def _same_request(agent, key: str, **kwargs):
    body = {"input_data": {"task": "Say hello"}, "context": {}}
    return {
        "agent": agent,
        "input_data": body["input_data"],
        "idempotency_key": key,
        "request_hash": request_hash(body),
        **kwargs,
    }


async def test_a_retried_sync_request_returns_the_first_response_without_a_provider_call(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(text="first answer")
    first = await engine.execute_agent(**_same_request(agent, "retry-1"), user=alice)
    again = await engine.execute_agent(**_same_request(agent, "retry-1"), user=alice)
    assert again.execution_id == first.execution_id
    assert (again.success, again.output, again.cost) == (True, "first answer", first.cost)
    assert len(fake_openai.requests) == 1
    assert await AgentExecution.objects.acount() == 1


async def test_two_concurrent_identical_sync_requests_make_one_row_and_one_provider_call(
    fake_registry, fake_openai, agent, alice
):
    fake_openai.fail(Fault("slow_first_byte", delay=0.5))
    fake_openai.reply(text="only once")
    first, second = await asyncio.gather(
        engine.execute_agent(**_same_request(agent, "same"), user=alice),
        engine.execute_agent(**_same_request(agent, "same"), user=alice),
    )
    assert first.execution_id == second.execution_id
    assert first.output == second.output == "only once"
    assert len(fake_openai.requests) == 1
    assert await AgentExecution.objects.acount() == 1


async def test_a_retried_stream_replays_the_outcome(fake_registry, fake_openai, agent, alice):
    fake_openai.reply(text="streamed once")
    async with aclosing(engine.execute_streaming(**_same_request(agent, "s1"), user=alice)) as events:
        first = [event async for event in events]
    async with aclosing(engine.execute_streaming(**_same_request(agent, "s1"), user=alice)) as events:
        again = [event async for event in events]
    assert [e.name for e in again] == ["execution.created", "execution.completed"]
    assert again[0].execution_id == first[0].execution_id
    assert again[-1].data()["output"] == "streamed once"
    assert len(fake_openai.requests) == 1


async def test_a_retried_background_request_is_not_queued_twice(
    no_redis, fake_registry, fake_openai, agent, alice
):
    fake_openai.reply(text="queued once")
    first = await engine.create_pending(**_same_request(agent, "bg"), user=alice)
    await enqueue_execution(first)
    again = await engine.create_pending(**_same_request(agent, "bg"), user=alice)
    assert again.pk == first.pk and again.replayed
    await enqueue_execution(again)
    await terminal(first.pk)
    assert len(fake_openai.requests) == 1


async def test_reused_key_with_another_body_is_422(fake_registry, fake_openai, agent, alice):
    await engine.execute_agent(**_same_request(agent, "k"), user=alice)
    other = {
        **_same_request(agent, "k"),
        "input_data": {"task": "else"},
        "request_hash": request_hash({"x": 1}),
    }
    with pytest.raises(ApplicationError) as info:
        await engine.execute_agent(**other, user=alice)
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")
    assert len(fake_openai.requests) == 1


# ---------------------------------------------------------------- one run per conversation


async def test_a_second_run_on_a_busy_conversation_is_409(fake_registry, fake_openai, alice):
    conversation = await sync_to_async(ConversationFactory)(owner=alice, agent__preferred_platform="openai")
    agent = await Agent.objects.aget(pk=conversation.agent_id)
    fake_openai.fail(Fault("slow_first_byte", delay=1.0))
    fake_openai.reply(text="first")
    context = {"conversation_id": str(conversation.pk)}
    first = asyncio.create_task(engine.execute_agent(agent, {"task": "one"}, alice, context))
    await until(lambda: _has_requests(fake_openai))
    with pytest.raises(ConversationBusy) as info:
        await engine.execute_agent(agent, {"task": "two"}, alice, context)
    assert (info.value.status, info.value.code) == (409, "conversation_busy")
    result = await first
    assert result.success
    assert await AgentExecution.objects.acount() == 1
    # Free again once the first is over.
    fake_openai.reply(text="second")
    assert (await engine.execute_agent(agent, {"task": "two"}, alice, context)).output == "second"


async def test_a_queued_background_run_holds_its_conversation(no_redis, fake_registry, fake_openai, alice):
    conversation = await sync_to_async(ConversationFactory)(owner=alice, agent__preferred_platform="openai")
    agent = await Agent.objects.aget(pk=conversation.agent_id)
    context = {"conversation_id": str(conversation.pk)}
    queued = await engine.create_pending(agent, {"task": "later"}, alice, context)
    with pytest.raises(ConversationBusy):
        await engine.create_pending(agent, {"task": "also later"}, alice, context)
    assert await request_cancel(queued.pk)  # cancelling it frees the conversation
    fake_openai.reply(text="now")
    assert (await engine.execute_agent(agent, {"task": "now"}, alice, context)).output == "now"
