"""Background runs over HTTP (202 + links to poll, cancel and follow), Idempotency-Key, health, and key
hygiene: no response, whatever the path, ever carries a configured provider key."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from httpx_sse import aconnect_sse

from apps.agents.models import AgentExecution, ExecutionStatus
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory
from tests.fakes.live_server import async_wait_until
from tests.fakes.registry import TEST_KEYS
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def auth(alice):  # type: ignore[no-untyped-def]
    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="worker", preferred_platform="openai", max_retries=0
    )
    return {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}


async def status_of(execution_id: str) -> str:
    return (await AgentExecution.objects.aget(pk=execution_id)).status


async def test_background_run_answers_202_with_links_then_completes(
    live_server_url, fake_registry, fake_openai, auth
):
    fake_openai.reply(text="Done in the background")
    async with httpx.AsyncClient(base_url=live_server_url, headers=auth, timeout=30) as client:
        response = await client.post(
            "/api/v1/agents/worker/execute/", json={"input_data": {"task": "later"}, "background": True}
        )
        assert response.status_code == 202, response.text
        body = response.json()
        execution_id = body["execution_id"]
        assert body["status"] == "pending"
        assert body["links"] == {
            "poll": f"{live_server_url}/api/v1/executions/{execution_id}/",
            "cancel": f"{live_server_url}/api/v1/executions/{execution_id}/cancel/",
            "events": f"{live_server_url}/api/v1/executions/{execution_id}/events/",
        }

        async def finished() -> bool:
            return (await client.get(body["links"]["poll"])).json()["status"] == "completed"

        assert await async_wait_until(finished, limit=15)
        detail = (await client.get(body["links"]["poll"])).json()
        assert (detail["mode"], detail["output"]) == ("background", "Done in the background")
        assert detail["attempts"][0]["platform"] == "openai"

        async with aconnect_sse(client, "GET", body["links"]["events"]) as source:
            events = [sse async for sse in source.aiter_sse()]
    assert events[0].event == "execution.created" and events[-1].event == "execution.completed"
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    # Resuming after the first event replays the rest only.
    async with (
        httpx.AsyncClient(base_url=live_server_url, headers=auth, timeout=30) as client,
        aconnect_sse(client, "GET", body["links"]["events"], headers={"Last-Event-ID": "1"}) as source,
    ):
        resumed = [sse async for sse in source.aiter_sse()]
    assert [e.id for e in resumed] == [e.id for e in events[1:]]


async def test_a_background_run_can_be_cancelled_through_its_link(
    live_server_url, fake_registry, fake_openai, auth
):
    fake_openai.reply(Reply(text=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.1))
    async with httpx.AsyncClient(base_url=live_server_url, headers=auth, timeout=30) as client:
        accepted = (
            await client.post(
                "/api/v1/agents/worker/execute/", json={"input_data": {"task": "x"}, "background": True}
            )
        ).json()
        execution_id = accepted["execution_id"]
        assert await async_wait_until(lambda: fake_openai.requests, limit=10)

        cancel = await client.post(accepted["links"]["cancel"])

        assert cancel.status_code == 202, cancel.text
        assert cancel.json()["cancel_requested"] is True
        assert await async_wait_until(lambda: _ended(execution_id), limit=10)
        assert await status_of(execution_id) == ExecutionStatus.CANCELLED
        again = await client.post(accepted["links"]["cancel"])
        assert again.status_code == 409


async def _ended(execution_id: str) -> bool:
    return await status_of(execution_id) not in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)


async def test_an_idempotency_key_replays_the_first_run(live_server_url, fake_registry, fake_openai, auth):
    fake_openai.reply(text="only once")
    body = {"input_data": {"task": "charge the card"}}
    headers = {"Idempotency-Key": "order-42"}
    async with httpx.AsyncClient(base_url=live_server_url, headers=auth, timeout=30) as client:
        first = await client.post("/api/v1/agents/worker/execute/", json=body, headers=headers)
        second = await client.post("/api/v1/agents/worker/execute/", json=body, headers=headers)
        other = await client.post(
            "/api/v1/agents/worker/execute/", json={"input_data": {"task": "something else"}}, headers=headers
        )

    assert first.status_code == second.status_code == 200
    assert first.json()["execution_id"] == second.json()["execution_id"]
    assert second.json()["output"] == "only once"
    assert len(fake_openai.requests) == 1
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert await AgentExecution.objects.acount() == 1


# ---------------------------------------------------------------------------------------------- health
async def test_health_reports_database_broker_and_platform_names(live_server_url, fake_registry, settings):
    settings.CELERY_BROKER_URL = ""
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        response = await client.get("/api/v1/health/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": {"ok": True},
        "broker": None,
        "platforms": ["openai", "anthropic", "gemini"],
    }


async def test_an_unreachable_broker_is_503_without_its_url(live_server_url, fake_registry, settings):
    settings.CELERY_BROKER_URL = "redis://:hunter2-password@127.0.0.1:1/0"
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        response = await client.get("/api/v1/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["broker"]["ok"] is False
    assert b"hunter2" not in response.content and b"127.0.0.1:1" not in response.content


# ---------------------------------------------------------------------------------------------- key hygiene
async def test_no_response_ever_contains_a_provider_key(
    live_server_url, fake_registry, fake_openai, fake_anthropic, fake_gemini, auth
):
    """Providers that echo the key back in their errors (as real ones partly do) on every path: sync, stream,
    background, execution detail, health, the schema. The adapters scrub it; this proves nothing leaks
    through the API's own rendering."""
    for fake, key in zip((fake_openai, fake_anthropic, fake_gemini), TEST_KEYS, strict=True):
        fake.fail(Fault("status", status=401, message=f"Incorrect API key provided: {key}"), times=20)
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=live_server_url, headers=auth, timeout=30) as client:
        sync = await client.post("/api/v1/agents/worker/execute/", json={"input_data": {"task": "x"}})
        assert sync.status_code == 502
        bodies.append(sync.content)
        async with client.stream(
            "POST", "/api/v1/agents/worker/execute/", json={"input_data": {"task": "x"}, "stream": True}
        ) as stream:
            bodies.append(b"".join([chunk async for chunk in stream.aiter_bytes()]))
        accepted = (
            await client.post(
                "/api/v1/agents/worker/execute/", json={"input_data": {"task": "x"}, "background": True}
            )
        ).json()
        assert await async_wait_until(lambda: _ended(accepted["execution_id"]), limit=15)
        for path in (
            f"/api/v1/executions/{sync.json()['execution_id']}/",
            f"/api/v1/executions/{accepted['execution_id']}/",
            f"/api/v1/executions/{accepted['execution_id']}/events/",
            "/api/v1/executions/",
            "/api/v1/agents/worker/",
            "/api/v1/agents/worker/stats/",
            "/api/v1/health/",
            "/api/schema/",
        ):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            bodies.append(response.content)

    assert b"Incorrect API key" in bodies[0]  # the provider's message does reach the client...
    for body in bodies:
        for key in TEST_KEYS:
            assert key.encode() not in body  # ...but never the key
            assert json.dumps(key).encode() not in body
