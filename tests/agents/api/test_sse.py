"""SSE over real HTTP: uvicorn runs the project's ASGI app (live_server_url), httpx + httpx-sse read it.

Checked: ids 1, 2, 3..., event names, first/last events, headers, pings, errors before the stream are JSON,
a failure mid-stream is an `execution.failed` event, and a client that disconnects cancels the run: the row
ends `cancelled` (not stuck `running`) and the upstream request to the provider is closed.
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from httpx_sse import aconnect_sse

from apps.agents.models import AgentExecution, Budget, BudgetUsage, ExecutionStatus
from apps.agents.services.budgets import period_start
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory
from tests.fakes.live_server import async_wait_until, leave_during_admission
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


@pytest.fixture
async def setup(alice):  # type: ignore[no-untyped-def]
    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="streamer", preferred_platform="openai", max_retries=0
    )
    return {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}


async def read_events(base: str, headers: dict, body: dict) -> tuple[httpx.Response, list]:  # type: ignore[type-arg]
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        aconnect_sse(
            client, "POST", "/api/v1/agents/streamer/execute/", json=body, headers=headers
        ) as source,
    ):
        events = [sse async for sse in source.aiter_sse()]
        return source.response, events


async def test_stream_true_sends_numbered_events_ending_with_the_seed_body(
    live_server_url, fake_registry, fake_openai, setup
):
    fake_openai.reply(text="Hello streaming world", input_tokens=12, output_tokens=3)

    response, events = await read_events(
        live_server_url, setup, {"input_data": {"task": "hi"}, "stream": True}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[0].event == "execution.created"
    assert [json.loads(e.data)["text"] for e in events if e.event == "output.delta"] == [
        "Hello ",
        "streaming ",
        "world",
    ]
    assert events[-1].event == "execution.completed"
    final = json.loads(events[-1].data)
    assert (final["success"], final["output"], final["tokens_used"]) == (True, "Hello streaming world", 15)
    created = json.loads(events[0].data)
    assert final["execution_id"] == created["execution_id"]
    execution = await AgentExecution.objects.aget(pk=created["execution_id"])
    assert (execution.status, execution.mode) == (ExecutionStatus.COMPLETED, "stream")


async def test_accept_event_stream_alone_asks_for_a_stream(
    live_server_url, fake_registry, fake_openai, setup
):
    fake_openai.reply(text="Hi")
    response, events = await read_events(live_server_url, setup, {"input_data": {"task": "hi"}})
    assert response.status_code == 200
    assert events[0].event == "execution.created" and events[-1].event == "execution.completed"


async def test_a_failure_mid_stream_is_an_execution_failed_event(
    live_server_url, fake_registry, fake_openai, setup
):
    fake_openai.fail(Fault("cut_stream", after_chunks=1))
    fake_openai.reply(text="Partial answer that never ends")

    _, events = await read_events(live_server_url, setup, {"input_data": {"task": "hi"}, "stream": True})

    assert events[-1].event == "execution.failed"
    assert json.loads(events[-1].data)["error"]["code"] == "provider_error"
    assert sum(e.event in TERMINAL for e in events) == 1


async def test_errors_before_the_stream_starts_are_json(live_server_url, setup):
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        response = await client.post(
            "/api/v1/agents/streamer/execute/",
            json={"input_data": {"task": ""}, "stream": True},
            headers={**setup, "Accept": "text/event-stream"},
        )
        missing = await client.post(
            "/api/v1/agents/nope/execute/",
            json={"input_data": {"task": "x"}, "stream": True},
            headers={**setup, "Accept": "text/event-stream"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "input_data.task" in response.json()["error"]["fields"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert not await AgentExecution.objects.aexists()


async def test_pings_keep_an_idle_stream_alive(live_server_url, fake_registry, fake_openai, setup, settings):
    settings.SSE_PING_SECONDS = 0.05
    fake_openai.reply(Reply(text="slow words here", chunk_delay=0.4))

    lines = []
    async with (
        httpx.AsyncClient(base_url=live_server_url, timeout=30) as client,
        client.stream(
            "POST",
            "/api/v1/agents/streamer/execute/",
            json={"input_data": {"task": "hi"}, "stream": True},
            headers=setup,
        ) as response,
    ):
        async for line in response.aiter_lines():
            lines.append(line)

    assert ": ping" in lines
    # Pings are comments: they never take an id, so ids stay 1, 2, 3...
    ids = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
    assert ids == [str(i) for i in range(1, len(ids) + 1)]


async def test_a_client_that_disconnects_cancels_the_run(live_server_url, fake_registry, fake_openai, setup):
    # Many slow chunks: the run would take ~20 s if nobody stopped it.
    fake_openai.reply(Reply(text=" ".join(f"word{i}" for i in range(100)), chunk_delay=0.2))

    async with (
        httpx.AsyncClient(base_url=live_server_url, timeout=30) as client,
        aconnect_sse(
            client,
            "POST",
            "/api/v1/agents/streamer/execute/",
            json={"input_data": {"task": "hi"}, "stream": True},
            headers=setup,
        ) as source,
    ):
        events = source.aiter_sse()
        created = await anext(events)
        delta = await anext(events)
        assert (created.event, delta.event) == ("execution.created", "output.delta")
        await events.aclose()
        # Leaving the block closes the response: the connection goes away mid-stream.
    execution_id = json.loads(created.data)["execution_id"]

    async def ended() -> bool:
        row = await AgentExecution.objects.aget(pk=execution_id)
        return row.status != ExecutionStatus.RUNNING

    assert await async_wait_until(ended, limit=10)
    execution = await AgentExecution.objects.aget(pk=execution_id)
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.error_code == "cancelled_by_user"
    assert execution.output and execution.output.startswith("word0")  # the partial output is kept
    # The upstream request was closed too (the provider saw the client go), not left to run to the end.
    assert await async_wait_until(lambda: fake_openai.disconnects >= 1, limit=10)
    assert fake_openai.completed_responses == 0


async def test_the_events_of_a_finished_execution_end_with_its_outcome(
    live_server_url, fake_registry, fake_openai, setup
):
    fake_openai.reply(text="Done")
    _, events = await read_events(live_server_url, setup, {"input_data": {"task": "hi"}, "stream": True})
    execution_id = json.loads(events[0].data)["execution_id"]

    async with (
        httpx.AsyncClient(base_url=live_server_url, timeout=30) as client,
        aconnect_sse(client, "GET", f"/api/v1/executions/{execution_id}/events/", headers=setup) as source,
    ):
        replay = [sse async for sse in source.aiter_sse()]

    assert replay[-1].event == "execution.completed"
    assert json.loads(replay[-1].data)["output"] == "Done"


@pytest.mark.parametrize("mode", ["sync", "stream", "background"])
async def test_a_client_that_leaves_while_its_run_is_admitted_leaves_no_running_row(
    live_server_url, fake_registry, fake_openai, setup, monkeypatch, mode
):
    """The row is written while the client is already gone (its request's admission still runs in a thread):
    it ends `cancelled` at once, not `running` (or `pending`) until the reaper finds it past its deadline."""
    fake_openai.reply(text="never sent")
    body = {"input_data": {"task": "hi"}, "stream": mode == "stream", "background": mode == "background"}
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        await leave_during_admission(
            monkeypatch, lambda: client.post("/api/v1/agents/streamer/execute/", json=body, headers=setup)
        )

    async def ended() -> bool:
        row = await AgentExecution.objects.filter(agent__agent_id="streamer").afirst()
        return row is not None and row.status not in (ExecutionStatus.RUNNING, ExecutionStatus.PENDING)

    assert await async_wait_until(ended, limit=10)
    execution = await AgentExecution.objects.aget(agent__agent_id="streamer")
    assert (execution.status, execution.mode) == (ExecutionStatus.CANCELLED, mode)
    assert fake_openai.requests == []  # nothing was sent to the provider


async def test_a_run_given_up_at_admission_gives_back_what_it_held(
    live_server_url, fake_registry, fake_openai, setup, alice, monkeypatch
):
    """Its first attempt's budget room and its concurrency slot, held with the row's INSERT, are released
    with the cancellation, so the budget does not count a run that never ran."""
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="day", limit_usd=Decimal("5"), max_concurrent=2
    )
    now = timezone.now()
    for window in ("day", "total"):  # an admission holds only in windows that have their row
        await BudgetUsage.objects.acreate(budget=budget, period_start=period_start(window, now))

    async def held_with_the_row() -> None:
        held = [row async for row in BudgetUsage.objects.filter(budget=budget)]
        assert sum(row.active_runs for row in held) == 1  # held with the row, at admission
        assert sum(row.reserved_units for row in held) > 0

    body = {"input_data": {"task": "hi"}}
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        await leave_during_admission(
            monkeypatch,
            lambda: client.post("/api/v1/agents/streamer/execute/", json=body, headers=setup),
            while_paused=held_with_the_row,
        )

    async def released() -> bool:
        rows = [row async for row in BudgetUsage.objects.filter(budget=budget)]
        return all(row.active_runs == 0 and row.reserved_units == 0 for row in rows)

    assert await async_wait_until(released, limit=10)
    execution = await AgentExecution.objects.aget(agent__agent_id="streamer")
    assert execution.status == ExecutionStatus.CANCELLED
    assert sum([row.spent_units async for row in BudgetUsage.objects.filter(budget=budget)]) == 0
