"""The HTTP contract of background runs with a real Celery worker: the API server (a live uvicorn in this
process) queues to Redis, a worker process runs, and polling, events, cancel, Idempotency-Key and 409 all go
through HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from httpx_sse import aconnect_sse

from apps.agents.models import AgentExecution
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory, ConversationFactory
from tests.fakes.live_server import async_wait_until
from tests.fakes.server import Fault, Reply

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

EXECUTE = "/api/v1/agents/bg-api/execute/"
LIMIT = 60.0


@pytest.fixture
async def client(live_server_url, worker, alice):
    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="bg-api", preferred_platform="openai", max_retries=0
    )
    headers = {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}
    async with httpx.AsyncClient(base_url=live_server_url, headers=headers, timeout=60) as http:
        yield http


async def _queue(client: httpx.AsyncClient, **extra) -> dict:
    response = await client.post(EXECUTE, json={"input_data": {"task": "later"}, "background": True, **extra})
    assert response.status_code == 202, response.text
    return response.json()


async def _poll_until(client: httpx.AsyncClient, link: str, *statuses: str) -> dict:
    async def reached():
        body = (await client.get(link)).json()
        return body if body["status"] in statuses else None

    found = None

    async def check() -> bool:
        nonlocal found
        found = await reached()
        return found is not None

    assert await async_wait_until(check, limit=LIMIT)
    return found


async def test_202_then_poll_to_completion_on_the_worker(client, fake_openai):
    fake_openai.reply(text="the worker's answer")
    accepted = await _queue(client)
    assert accepted["status"] == "pending"
    detail = await _poll_until(client, accepted["links"]["poll"], "completed", "failed")
    assert (detail["status"], detail["output"], detail["mode"]) == (
        "completed",
        "the worker's answer",
        "background",
    )
    assert len(fake_openai.requests) == 1


async def test_events_over_sse_resume_with_last_event_id(client, fake_openai):
    fake_openai.reply(Reply(text=" ".join(f"w{i}" for i in range(25)), chunk_delay=0.03))
    accepted = await _queue(client)
    events_link = accepted["links"]["events"]
    first = []
    async with aconnect_sse(client, "GET", events_link) as source:
        async for sse in source.aiter_sse():
            first.append(sse)
            if len(first) == 5:
                break  # the client drops mid-run
    async with aconnect_sse(client, "GET", events_link, headers={"Last-Event-ID": first[-1].id}) as source:
        rest = [sse async for sse in source.aiter_sse()]
    seen = first + rest
    assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0].event == "execution.created" and seen[-1].event == "execution.completed"
    # After the end, any server gives the whole record, then closes the stream.
    async with aconnect_sse(client, "GET", events_link) as source:
        replay = [sse async for sse in source.aiter_sse()]
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in seen]


async def test_cancel_through_the_api_stops_the_run_on_the_worker(client, fake_openai):
    fake_openai.fail(Fault("hang"))
    accepted = await _queue(client)
    await _poll_until(client, accepted["links"]["poll"], "running")
    assert await async_wait_until(lambda: fake_openai.requests, limit=LIMIT)
    response = await client.post(accepted["links"]["cancel"])
    assert response.status_code == 202, response.text
    detail = await _poll_until(client, accepted["links"]["poll"], "cancelled", "completed", "failed")
    assert detail["status"] == "cancelled"
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect, 10)


async def test_two_concurrent_identical_requests_run_once(client, fake_openai):
    fake_openai.fail(Fault("slow_first_byte", delay=0.5))
    fake_openai.reply(text="charged once")
    headers = {"Idempotency-Key": "order-7"}
    body = {"input_data": {"task": "charge"}, "background": True}
    first, second = await asyncio.gather(
        client.post(EXECUTE, json=body, headers=headers), client.post(EXECUTE, json=body, headers=headers)
    )
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["execution_id"] == second.json()["execution_id"]
    detail = await _poll_until(client, first.json()["links"]["poll"], "completed", "failed")
    assert detail["output"] == "charged once"
    assert await AgentExecution.objects.acount() == 1
    assert len(fake_openai.requests) == 1
    reused = await client.post(EXECUTE, json={**body, "input_data": {"task": "other"}}, headers=headers)
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotency_key_reused")


async def test_a_second_run_on_a_busy_conversation_is_409(client, fake_registry, fake_openai, alice):
    conversation = await sync_to_async(ConversationFactory)(owner=alice, agent=None)
    fake_openai.fail(Fault("slow_first_byte", delay=1.0))
    fake_openai.reply(text="first")
    context = {"conversation_id": str(conversation.pk)}
    accepted = await _queue(client, context=context)
    busy = await client.post(EXECUTE, json={"input_data": {"task": "now"}, "context": context})
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "conversation_busy"
    assert busy.json()["error"]["fields"] == {"active_execution_id": [accepted["execution_id"]]}
    await _poll_until(client, accepted["links"]["poll"], "completed")
    fake_openai.reply(text="second")
    after = await client.post(EXECUTE, json={"input_data": {"task": "now"}, "context": context})
    assert after.status_code == 200, after.text
