"""A run admitted on the event loop (apps/agents/services/loop_admission.py, api/execute_route.py
admit_on_loop), over real HTTP: taken only when the token, agent and budgets are in this process's memory and
nothing needs the thread; answered and recorded as the thread's admission answers and records; every other
request admitted in its thread, with nothing counted or written twice."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async
from django.core.cache import caches

from apps.agents.api import execute_route
from apps.agents.api.authentication import CachedTokenAuthentication
from apps.agents.models import Agent, AgentExecution, Budget, Conversation, ExecutionStatus
from apps.agents.services import budget_cache, loop_admission
from config import near_cache
from tests.agents.api.conftest import throttle_rates
from tests.agents.api.test_execute_route import BODY, URL, _alice_id, _user_counters, post, shape
from tests.agents.services.test_engine_loop_admission import fields_of
from tests.fakes.live_server import async_wait_until
from tests.fakes.server import Fault

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_writes_only")]


@pytest.fixture
def threads(monkeypatch) -> list[str]:
    """The agent keys of the requests admitted in a thread (the unit); the others went on the loop."""
    admitted: list[str] = []
    unit = execute_route._admit_unit

    async def counted(request, key, schemes):  # type: ignore[no-untyped-def]
        admitted.append(key)
        return await unit(request, key, schemes)

    monkeypatch.setattr(execute_route, "_admit_unit", counted)
    return admitted


async def warm(base: str, headers: dict[str, str], fake: Any) -> None:
    """One run admitted in its thread, which fills the caches; then until this process holds them (the near
    cache trusts its copies once its subscriber has heard Redis: config/near_cache.py)."""
    fake.reply(text="warm")
    assert (await post(base, headers)).status_code == 200
    key = headers["Authorization"].split()[1]

    def in_memory() -> bool:
        return CachedTokenAuthentication().peek_credentials(key) is not None

    assert await async_wait_until(in_memory, limit=10)


def row_of(response: httpx.Response) -> dict[str, Any]:
    return fields_of(response.json()["execution_id"])


async def test_a_plain_run_is_admitted_on_the_loop_and_recorded_as_in_the_thread(
    live_server_url, fake_registry, fake_openai, headers, threads, monkeypatch
):
    await warm(live_server_url, headers, fake_openai)
    body = {"input_data": {"task": "hi", "extra": [1, "two"]}, "context": {"metadata": {"k": "v"}}}
    fake_openai.reply(text="Hello", input_tokens=12, output_tokens=3)
    on_loop = await post(live_server_url, headers, json=body)
    admitted_on_loop = list(threads)
    with monkeypatch.context() as off:
        off.setattr(loop_admission, "plan", lambda *args, **kwargs: None)
        fake_openai.reply(text="Hello", input_tokens=12, output_tokens=3)
        in_thread = await post(live_server_url, headers, json=body)

    assert admitted_on_loop == ["helper"]  # the warm-up's only
    assert threads == ["helper", "helper"]
    assert on_loop.status_code == 200
    assert shape(on_loop) == shape(in_thread)
    assert await sync_to_async(row_of)(on_loop) == await sync_to_async(row_of)(in_thread)
    assert (await sync_to_async(row_of)(on_loop))["status"] == ExecutionStatus.COMPLETED


async def _conversation(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    conversation = await Conversation.objects.acreate(owner=alice)
    return {"json": {**BODY, "context": {"conversation_id": str(conversation.pk)}}}


async def _idempotency_key(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {"extra_headers": {"Idempotency-Key": "k-1"}}


async def _budget(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    await Budget.objects.acreate(scope="user", user=alice, period="day", limit_tokens=1_000_000)
    return {}


async def _output_schema(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    agent = await Agent.objects.aget(agent_id="helper")
    agent.output_schema = {"type": "object"}
    await agent.asave()
    return {}


async def _large_body(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {"json": {"input_data": {"task": "x" * (execute_route.LOOP_BODY_BYTES + 1)}}}


async def _token_not_in_memory(alice) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    await sync_to_async(caches["auth"].clear)()
    return {}


THREAD_ONLY = {
    "a conversation": _conversation,
    "an Idempotency-Key": _idempotency_key,
    "a budget that applies": _budget,
    "an output schema": _output_schema,
    "a body over LOOP_BODY_BYTES": _large_body,
    "the token not in this process's memory": _token_not_in_memory,
}


@pytest.mark.parametrize("case", list(THREAD_ONLY))
async def test_what_needs_the_database_or_the_thread_is_admitted_in_the_thread(
    live_server_url, fake_registry, fake_openai, headers, alice, threads, monkeypatch, case
):
    await warm(live_server_url, headers, fake_openai)
    parsed: list[str] = []
    body = execute_route._body

    def counted(request):  # type: ignore[no-untyped-def]
        parsed.append(request.path)
        return body(request)

    monkeypatch.setattr(execute_route, "_body", counted)
    extra = await THREAD_ONLY[case](alice)
    extra_headers = extra.pop("extra_headers", {})
    caches["throttle"].clear()
    fake_openai.reply(text="{}")  # an object, for the case with an output schema

    answer = await post(live_server_url, {**headers, **extra_headers}, **extra)

    assert answer.status_code == 200, answer.text[:300]
    assert threads == ["helper", "helper"]  # the warm-up's and this one's
    assert await sync_to_async(_user_counters)(await _alice_id(headers)) == [1]  # counted once
    # Parsed once, by the thread: only a conversation, named in the body, is found out after parsing it.
    assert len(parsed) == (2 if case == "a conversation" else 1)


REFUSALS = {
    "invalid body": ({"json": {"input_data": {}}}, 400, "invalid"),
    "not JSON": ({"json": None, "content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "parse_error"),
    "task too long": ({"json": {"input_data": {"task": "x" * 60_000}}}, 400, "invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refusal_on_the_loop_is_the_thread_s_counted_once_and_writes_nothing(
    live_server_url, fake_registry, fake_openai, headers, threads, monkeypatch, settings, case
):
    settings.MAX_TASK_CHARS = 50_000
    await warm(live_server_url, headers, fake_openai)
    extra, status, code = REFUSALS[case]
    extra = dict(extra)
    extra_headers = extra.pop("headers", {})

    async def send() -> httpx.Response:
        caches["throttle"].clear()
        return await post(live_server_url, {**headers, **extra_headers}, **extra)

    on_loop = await send()
    counted = await sync_to_async(_user_counters)(await _alice_id(headers))
    with monkeypatch.context() as off:
        off.setattr(execute_route, "admit_on_loop", _none)
        in_thread = await send()

    assert threads == ["helper", "helper"]  # the warm-up's and the thread's answer
    assert (on_loop.status_code, on_loop.json()["error"]["code"]) == (status, code)
    assert shape(on_loop) == shape(in_thread)
    assert counted == [1]
    assert await AgentExecution.objects.acount() == 1  # the warm-up's


async def _none(*args: Any) -> None:
    return None


async def test_an_inactive_agent_is_refused_on_the_loop_as_in_the_thread(
    live_server_url, fake_registry, fake_openai, headers, threads, monkeypatch
):
    await warm(live_server_url, headers, fake_openai)
    agent = await Agent.objects.aget(agent_id="helper")
    agent.is_active = False
    await agent.asave()  # forgotten by the agent cache: the next request reads it again, in its thread
    assert (await post(live_server_url, headers)).status_code == 409

    on_loop = await post(live_server_url, headers)
    with monkeypatch.context() as off:
        off.setattr(execute_route, "admit_on_loop", _none)
        in_thread = await post(live_server_url, headers)

    assert threads == ["helper", "helper", "helper"]  # the warm-up, the re-read, the thread's answer
    assert (on_loop.status_code, on_loop.json()["error"]["code"]) == (409, "agent_inactive")
    assert shape(on_loop) == shape(in_thread)
    assert await AgentExecution.objects.acount() == 1  # the warm-up's


async def test_with_redis_the_copies_and_the_counters_are_read_on_the_loop(
    live_server_url, fake_registry, fake_openai, headers, threads, settings, monkeypatch
):
    """REDIS_URL's caches (config/settings.py): tokens, agents and budgets from the near cache's copies (a value
    is copied when read, not when written: the second request fills them), the rate counted in Redis through
    the loop's asyncio client, against the same counter as the thread's."""
    # One ping as the subscriber starts, then none within a long lease: a pong unread on its socket makes the
    # copies untrusted for that moment (by design: tests/test_near_cache.py no_pongs), which would send one
    # request to the thread and fail the count below.
    monkeypatch.setattr(near_cache, "PING_SECONDS", 60.0)
    monkeypatch.setattr(near_cache, "LEASE_SECONDS", 120.0)
    prefix = uuid.uuid4().hex
    redis_url = "redis://127.0.0.1:6379/13"
    settings.CACHES = {
        **settings.CACHES,
        "auth": {"BACKEND": "config.near_cache.NearRedisCache", "LOCATION": redis_url, "KEY_PREFIX": f"{prefix}a"},
        "throttle": {"BACKEND": "config.redis_cache.SharedRedisCache", "LOCATION": redis_url, "KEY_PREFIX": f"{prefix}t"},
    }  # fmt: skip
    try:
        with throttle_rates(execute="3/min"):
            fake_openai.reply(text="written to Redis")
            assert (await post(live_server_url, headers)).status_code == 200
            await warm(live_server_url, headers, fake_openai)  # read from Redis, and copied
            fake_openai.reply(text="on the loop")
            third = await post(live_server_url, headers)
            refused = await post(live_server_url, headers)
    finally:  # this test's keys only: clear() would empty the database other workers' tests use
        server = redis.Redis.from_url(redis_url)
        server.delete(*server.keys(f"{prefix}*"))
        server.close()

    assert (third.status_code, refused.status_code) == (200, 429)
    assert threads == ["helper", "helper"]
    assert await AgentExecution.objects.acount() == 3


async def test_the_rate_limit_is_counted_on_the_loop_against_the_same_counter(
    live_server_url, fake_registry, fake_openai, headers, threads
):
    with throttle_rates(execute="2/min"):
        await warm(live_server_url, headers, fake_openai)  # one run of two, in the thread
        fake_openai.reply(text="two")
        second = await post(live_server_url, headers)
        refused = await post(live_server_url, headers)

    assert (second.status_code, refused.status_code) == (200, 429)
    assert refused.json()["error"]["code"] == "throttled"
    assert int(refused.headers["retry-after"]) >= 1
    assert threads == ["helper"]
    assert await AgentExecution.objects.acount() == 2


async def test_a_budget_made_after_the_cache_was_filled_sends_the_next_run_to_the_thread(
    live_server_url, fake_registry, fake_openai, headers, alice, threads
):
    """A budget saved changes the budgets' generation (services/budget_cache.py): the cached "no budget" is no
    longer current, so the next run is not admitted on the loop without its budget."""
    await warm(live_server_url, headers, fake_openai)
    assert budget_cache.peek(alice.pk, (await Agent.objects.aget(agent_id="helper")).pk) is not None
    await Budget.objects.acreate(scope="user", user=alice, period="day", limit_usd=Decimal("0"))

    answer = await post(live_server_url, headers)

    assert (answer.status_code, answer.json()["error"]["code"]) == (429, "budget_exceeded")
    assert threads == ["helper", "helper"]


async def test_a_client_that_leaves_during_the_insert_leaves_its_row_cancelled(
    live_server_url, fake_registry, fake_openai, headers, threads, monkeypatch
):
    """The INSERT is written, then the client goes before its answer is read: the row is recorded cancelled
    (kept_if_cancelled), not left running for the reaper."""
    await warm(live_server_url, headers, fake_openai)
    inserted = asyncio.Event()
    insert = loop_admission.ainsert_row

    async def slow_reply(execution, *args):  # type: ignore[no-untyped-def]
        await insert(execution, *args)
        inserted.set()
        await asyncio.sleep(1.0)  # the INSERT's reply, slow to come

    monkeypatch.setattr(loop_admission, "ainsert_row", slow_reply)
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        request = asyncio.ensure_future(client.post(URL, json=BODY, headers=headers))
        assert await async_wait_until(lambda: inserted.is_set(), limit=10)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request

    async def cancelled() -> bool:
        rows = [row async for row in AgentExecution.objects.order_by("created_at")]
        return len(rows) == 2 and rows[1].status == ExecutionStatus.CANCELLED

    assert await async_wait_until(cancelled, limit=10)
    assert threads == ["helper"]
    assert len(fake_openai.requests) == 1  # the warm-up's: nothing was sent for the abandoned run


async def test_a_provider_failure_after_a_loop_admission_is_recorded_and_answered(
    live_server_url, fake_registry, fake_openai, fake_anthropic, fake_gemini, headers, threads
):
    await warm(live_server_url, headers, fake_openai)
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=500), times=3)

    answer = await post(live_server_url, headers)

    assert (answer.status_code, answer.json()["success"]) == (502, False)
    assert threads == ["helper"]
    row = await AgentExecution.objects.aget(pk=answer.json()["execution_id"])
    assert (row.status, row.error_code) == (ExecutionStatus.FAILED, "provider_error")
