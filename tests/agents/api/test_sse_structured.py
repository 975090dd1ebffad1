"""Structured agents stream their JSON as it is written (native SSE over real HTTP, fake OpenAI server): deltas
first, then the validated result; an answer that fails validation is taken back (`output.reset`) before the
re-ask's deltas."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from httpx_sse import aconnect_sse

from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA = {
    "type": "object",
    "properties": {"greeting": {"type": "string"}, "words": {"type": "integer", "minimum": 1}},
    "required": ["greeting", "words"],
    "additionalProperties": False,
}


@pytest.fixture
async def headers(alice):  # type: ignore[no-untyped-def]
    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="greeter", preferred_platform="openai", max_retries=0, output_schema=SCHEMA
    )
    return {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}


async def stream(base: str, headers: dict) -> list:  # type: ignore[type-arg]
    body = {"input_data": {"task": "Say hello in five words."}, "stream": True}
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        aconnect_sse(client, "POST", "/api/v1/agents/greeter/execute/", json=body, headers=headers) as source,
    ):
        assert source.response.status_code == 200
        return [(sse.event, json.loads(sse.data)) async for sse in source.aiter_sse()]


async def test_a_structured_run_streams_its_json_as_deltas_before_the_result(
    live_server_url, fake_registry, fake_openai, headers
):
    answer = '{"greeting": "Hello there, my good friend", "words": 5}'
    fake_openai.reply(text=answer)

    events = await stream(live_server_url, headers)

    names = [name for name, _ in events]
    deltas = [data["text"] for name, data in events if name == "output.delta"]
    assert len(deltas) >= 3  # word by word from the provider, not one validated block
    assert "".join(deltas) == answer
    assert names[-1] == "execution.completed" and names.index("execution.completed") > names.index(
        "output.delta"
    )
    assert events[-1][1]["output"] == {"greeting": "Hello there, my good friend", "words": 5}


async def test_an_invalid_streamed_answer_is_taken_back_before_the_reask(
    live_server_url, fake_registry, fake_openai, headers
):
    fake_openai.reply(text='{"greeting": "Hello there", "words": 0}')  # below the minimum
    fake_openai.reply(text='{"greeting": "Hello there, good friend", "words": 4}')

    events = await stream(live_server_url, headers)

    names = [name for name, _ in events]
    reset = names.index("output.reset")
    assert "words" in events[reset][1]["reason"]
    before = "".join(d["text"] for n, d in events[:reset] if n == "output.delta")
    after = "".join(d["text"] for n, d in events[reset:] if n == "output.delta")
    assert before == '{"greeting": "Hello there", "words": 0}'
    assert after == '{"greeting": "Hello there, good friend", "words": 4}'
    assert names[-1] == "execution.completed"
    assert events[-1][1]["output"] == {"greeting": "Hello there, good friend", "words": 4}
    assert events[-1][1]["metadata"]["reasks"] == 1
