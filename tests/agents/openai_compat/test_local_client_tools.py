"""Client-side tools on the embedded model: the official openai SDK against the live server, the agent on the
REAL bundled SmolLM2 (slow: marked local_model; fixed seed). The model's tool call comes back with
finish_reason "tool_calls"; the follow-up request with the tool's result completes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from apps.agents.models import AgentExecution
from apps.platforms.local import LocalPlatform
from apps.platforms.registry import PlatformRegistry
from tests.agents.openai_compat.conftest import token_for
from tests.factories import AgentFactory
from tests.fakes.registry import registry_installed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.local_model]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def local_registry() -> Iterator[PlatformRegistry]:
    local = LocalPlatform(default_model="smollm2-135m-instruct", n_ctx=4096, seed=3)
    registry = PlatformRegistry({"local": local}, fallback_order=["local"], default="local")
    with registry_installed(registry):
        yield registry


def test_a_client_tool_round_trip_on_the_local_model(live_server_url, local_registry, alice) -> None:
    AgentFactory(
        owner=alice,
        agent_id="local-agent",
        preferred_platform="local",
        model="",
        system_prompt="You help. Use the tools you are given.",
        output_schema=None,
        timeout_seconds=120,
    )
    client = openai.OpenAI(
        base_url=f"{live_server_url}/v1", api_key=token_for(alice), max_retries=0, timeout=150.0
    )
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris? Call get_weather."}]

    first = client.chat.completions.create(model="local-agent", messages=messages, tools=[WEATHER_TOOL])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "celsius": 21}'},
    ]
    # tool_choice "none": answer from the result now (the local grammar then offers no tool call).
    final = client.chat.completions.create(
        model="local-agent", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", seed=5
    )

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert AgentExecution.objects.filter(status="completed").count() == 2
