"""Structured output, client-side tools, generation options, images and x-request-id through the official
openai SDK against a live server, with the fake providers checking what they receive (tests/fakes)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from apps.agents.models import Agent, AgentExecution
from tests.factories import AgentFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db(transaction=True)

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class City(BaseModel):
    name: str
    population: int


def only_execution() -> AgentExecution:
    (execution,) = AgentExecution.objects.all()
    return execution


def agent_on(alice, platform: str, **kwargs) -> Agent:  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice,
        agent_id=f"{platform}-agent",
        preferred_platform=platform,
        model="",
        system_prompt="You help.",
        **kwargs,
    )


def last_body(fake) -> dict:  # type: ignore[no-untyped-def]
    return fake.requests[-1].body


# ------------------------------------------------------------------------------------------- parameters
def test_generation_options_reach_openai_and_x_request_id_is_the_execution(
    client_for, fake_registry, fake_openai, alice
):
    agent_on(alice, "openai")
    fake_openai.reply(text="Bonjour")
    completion = client_for(alice).chat.completions.create(
        model="openai-agent",
        messages=[{"role": "user", "content": "Hi"}],
        stop=["END"],
        seed=7,
        top_p=0.5,
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        user="user-42",
    )
    body = last_body(fake_openai)
    assert body["stop"] == ["END"] and body["seed"] == 7 and body["top_p"] == 0.5
    assert (body["presence_penalty"], body["frequency_penalty"], body["user"]) == (0.25, -0.5, "user-42")
    execution = only_execution()
    assert completion._request_id == str(execution.pk)
    assert execution.context["metadata"]["openai_compat"]["seed"] == 7


def test_options_go_to_gemini_under_its_own_names(client_for, fake_registry, fake_gemini, alice):
    agent_on(alice, "gemini")
    fake_gemini.reply(text="ok")
    client_for(alice).chat.completions.create(
        model="gemini-agent",
        messages=[{"role": "user", "content": "Hi"}],
        stop="END",
        seed=3,
        top_p=0.9,
        presence_penalty=0.5,
    )
    config = last_body(fake_gemini)["generationConfig"]
    assert config["stopSequences"] == ["END"] and config["seed"] == 3
    assert (config["topP"], config["presencePenalty"]) == (0.9, 0.5)


def test_an_option_the_platform_lacks_is_a_400_naming_it_and_runs_nothing(
    client_for, fake_registry, fake_anthropic, alice
):
    agent_on(alice, "anthropic")
    client = client_for(alice)
    for option, value in (("seed", 1), ("top_p", 0.5), ("frequency_penalty", 1.0), ("temperature", 0.2)):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="anthropic-agent", messages=[{"role": "user", "content": "Hi"}], **{option: value}
            )
        assert caught.value.body["param"] == option
        assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert not AgentExecution.objects.exists() and not fake_anthropic.requests


def test_stop_user_and_images_go_to_anthropic(client_for, fake_registry, fake_anthropic, alice):
    agent_on(alice, "anthropic")
    fake_anthropic.reply(text="A red pixel.")
    completion = client_for(alice).chat.completions.create(
        model="anthropic-agent",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                ],
            }
        ],
        stop=["END"],
        user="user-42",
    )
    assert completion.choices[0].message.content == "A red pixel."
    body = last_body(fake_anthropic)
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "user-42"}
    blocks = body["messages"][-1]["content"]
    assert blocks[-1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
    }


def test_an_image_url_is_never_fetched(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai")
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(alice).chat.completions.create(
            model="openai-agent",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}],
                }
            ],
        )
    assert caught.value.body["param"] == "messages[0].content[0].image_url.url"
    assert not fake_openai.requests


# ------------------------------------------------------------------------------------------- structured output
def test_parse_with_a_pydantic_model_sends_the_schema_and_reasks_an_invalid_answer(
    client_for, fake_registry, fake_openai, alice
):
    agent_on(alice, "openai")
    fake_openai.reply(text='{"name": "Paris"}')  # population missing: re-asked
    fake_openai.reply(text='{"name": "Paris", "population": 2100000}')
    completion = client_for(alice).chat.completions.parse(
        model="openai-agent",
        messages=[{"role": "user", "content": "Capital of France?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(name="Paris", population=2100000)
    first, second = (request.body for request in fake_openai.requests)
    sent = first["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["required"] == ["name", "population"]
    assert "population" in second["messages"][-1]["content"]  # the validation error went back to the model
    execution = only_execution()
    assert execution.output == {"name": "Paris", "population": 2100000}
    assert execution.metadata["reasks"] == 1


def test_json_schema_goes_to_anthropic_as_its_forced_output_tool(
    client_for, fake_registry, fake_anthropic, alice
):
    agent_on(alice, "anthropic")
    fake_anthropic.reply(
        tool_calls=[{"id": "t1", "name": "final_output", "arguments": {"name": "Oslo", "population": 700000}}]
    )
    completion = client_for(alice).chat.completions.parse(
        model="anthropic-agent",
        messages=[{"role": "user", "content": "Capital of Norway?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(name="Oslo", population=700000)
    body = last_body(fake_anthropic)
    (tool,) = body["tools"]
    assert tool["name"] == "final_output" and tool["input_schema"]["required"] == ["name", "population"]


# ------------------------------------------------------------------------------------------- client tools
def _weather_round_trip(client, model: str, fake, streamed: bool = False):  # type: ignore[no-untyped-def]
    fake.reply(text="", tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}])
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    if streamed:
        stream = client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_TOOL], stream=True
        )
        calls: dict[int, dict] = {}
        finish = None
        for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or ():
                    call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    call["name"] += (delta.function.name or "") if delta.function else ""
                    call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        assert finish == "tool_calls"
        (call,) = calls.values()
        tool_calls = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
        ]
    else:
        first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        tool_calls = [call.model_dump() for call in choice.message.tool_calls]
    assert tool_calls[0]["function"]["name"] == "get_weather"
    assert json.loads(tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    fake.reply(text="Sunny in Paris.")
    messages += [
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": '{"sky": "sunny"}'},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert (final.choices[0].finish_reason, final.choices[0].message.content) == ("stop", "Sunny in Paris.")
    return tool_calls[0]["id"]


def test_openai_client_tool_round_trip(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai", tools=["calculator"])
    _weather_round_trip(client_for(alice), "openai-agent", fake_openai)
    first, second = (request.body for request in fake_openai.requests)
    # The client's tool beside the agent's own.
    assert sorted(tool["function"]["name"] for tool in first["tools"]) == ["calculator", "get_weather"]
    roles = [message["role"] for message in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"][0]["id"] == "call_1"
    # Recorded on the execution that handed the call back.
    handed = AgentExecution.objects.order_by("created_at").first()
    assert handed.metadata["client_tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    ]


def test_client_tool_calls_are_streamed_as_tool_call_deltas(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai")
    _weather_round_trip(client_for(alice), "openai-agent", fake_openai, streamed=True)


def test_anthropic_client_tool_round_trip(client_for, fake_registry, fake_anthropic, alice):
    agent_on(alice, "anthropic")
    _weather_round_trip(client_for(alice), "anthropic-agent", fake_anthropic)
    second = last_body(fake_anthropic)
    assistant, results = second["messages"][-2:]
    assert assistant["content"][-1] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": '{"sky": "sunny"}'}
    ]


def test_gemini_client_tool_round_trip(client_for, fake_registry, fake_gemini, alice):
    agent_on(alice, "gemini")
    _weather_round_trip(client_for(alice), "gemini-agent", fake_gemini)
    contents = last_body(fake_gemini)["contents"]
    assert (
        contents[-2]["role"] == "model" and contents[-2]["parts"][-1]["functionCall"]["name"] == "get_weather"
    )
    response = contents[-1]["parts"][0]["functionResponse"]
    assert (response["name"], response["response"]) == ("get_weather", {"sky": "sunny"})


def test_a_client_tool_named_like_the_agents_own_is_a_400(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai", tools=["calculator"])
    clash = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(alice).chat.completions.create(
            model="openai-agent", messages=[{"role": "user", "content": "1+1"}], tools=[clash]
        )
    assert caught.value.body["param"] == "tools[0].function.name"
    assert not fake_openai.requests


def test_tool_choice_is_forwarded(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai")
    fake_openai.reply(tool_calls=[{"id": "c", "name": "get_weather", "arguments": {"city": "Rome"}}], text="")
    client_for(alice).chat.completions.create(
        model="openai-agent",
        messages=[{"role": "user", "content": "Rome?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert last_body(fake_openai)["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


# ------------------------------------------------------------------------------------------- fallbacks, agent kinds
def test_a_fallback_platform_that_lacks_an_option_is_skipped_not_sent_without_it(
    client_for, fake_registry, fake_openai, fake_anthropic, fake_gemini, alice
):
    agent_on(alice, "openai", max_retries=0)
    fake_openai.fail(Fault("status", status=500))
    fake_gemini.reply(text="From Gemini.")
    completion = client_for(alice).chat.completions.create(
        model="openai-agent", messages=[{"role": "user", "content": "Hi"}], seed=11
    )
    assert completion.choices[0].message.content == "From Gemini."
    assert not fake_anthropic.requests  # Anthropic has no seed: skipped
    assert last_body(fake_gemini)["generationConfig"]["seed"] == 11
    statuses = [(a["platform"], a["status"]) for a in only_execution().attempts]
    assert statuses == [("openai", "server_error"), ("anthropic", "unsupported"), ("gemini", "ok")]


def test_a_conversational_agent_hands_client_tool_calls_back_too(
    client_for, fake_registry, fake_openai, alice
):
    agent_on(alice, "openai", agent_type="conversational")
    _weather_round_trip(client_for(alice), "openai-agent", fake_openai)
    assert [m["role"] for m in last_body(fake_openai)["messages"]] == ["system", "user", "assistant", "tool"]


def test_json_schema_to_a_conversational_agent_is_a_400(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai", agent_type="conversational")
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(alice).chat.completions.parse(
            model="openai-agent", messages=[{"role": "user", "content": "Paris?"}], response_format=City
        )
    assert caught.value.body["param"] == "response_format"


def test_the_request_schema_replaces_the_agents_own(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai", output_schema={"type": "object", "required": ["summary"]})
    fake_openai.reply(text='{"name": "Rome", "population": 2800000}')
    completion = client_for(alice).chat.completions.parse(
        model="openai-agent",
        messages=[{"role": "user", "content": "Capital of Italy?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(name="Rome", population=2800000)
    sent = last_body(fake_openai)["response_format"]["json_schema"]["schema"]
    assert sent["required"] == ["name", "population"]


def test_images_go_to_openai_and_gemini_inline(client_for, fake_registry, fake_openai, fake_gemini, alice):
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    message = {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}
    for platform, fake in (("openai", fake_openai), ("gemini", fake_gemini)):
        agent_on(alice, platform)
        fake.reply(text="A pixel.")
        client_for(alice).chat.completions.create(model=f"{platform}-agent", messages=[message])
    parts = last_body(fake_openai)["messages"][-1]["content"]
    assert parts[-1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    gemini_parts = last_body(fake_gemini)["contents"][-1]["parts"]
    inline = gemini_parts[-1]["inlineData"]  # the SDK's own JSON names for the Blob
    assert inline["data"] == PIXEL and "image/png" in inline.values()


def test_logprobs_come_back_from_openai(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai")
    fake_openai.reply(text="Hello there")
    completion = client_for(alice).chat.completions.create(
        model="openai-agent", messages=[{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=2
    )
    body = last_body(fake_openai)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    tokens = completion.choices[0].logprobs.content
    assert [token.token for token in tokens] == ["Hello ", "there"]
    assert len(tokens[0].top_logprobs) == 2


def test_logprobs_are_refused_where_not_available(client_for, fake_registry, fake_gemini, alice):
    agent_on(alice, "gemini")
    client = client_for(alice)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gemini-agent", messages=[{"role": "user", "content": "Hi"}], logprobs=True
        )
    assert caught.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gemini-agent", messages=[{"role": "user", "content": "Hi"}], logprobs=True, stream=True
        )
    assert caught.value.body["param"] == "logprobs"
    assert not fake_gemini.requests


@pytest.mark.parametrize("platform", ["anthropic", "gemini"])
def test_streamed_client_tool_round_trip_on_other_platforms(
    client_for, fake_registry, fake_anthropic, fake_gemini, alice, platform
):
    agent_on(alice, platform)
    fake = {"anthropic": fake_anthropic, "gemini": fake_gemini}[platform]
    _weather_round_trip(client_for(alice), f"{platform}-agent", fake, streamed=True)


def test_the_sdk_stream_helper_parses_a_streamed_structured_answer(
    client_for, fake_registry, fake_openai, alice
):
    agent_on(alice, "openai")
    fake_openai.reply(text='{"name": "Lima", "population": 10000000}')
    with client_for(alice).chat.completions.stream(
        model="openai-agent", messages=[{"role": "user", "content": "Capital of Peru?"}], response_format=City
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == City(name="Lima", population=10000000)
    assert final.id == f"chatcmpl-{only_execution().pk}"
    assert last_body(fake_openai)["response_format"]["type"] == "json_schema"


def test_every_v1_response_has_an_x_request_id(client_for, fake_registry, fake_openai, alice):
    agent_on(alice, "openai")
    client = client_for(alice)
    models = client.models.with_raw_response.list()
    assert models.headers["x-request-id"].startswith("req_")
    fake_openai.reply(text="Hi there")
    raw = client.chat.completions.with_raw_response.create(
        model="openai-agent", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert raw.headers["x-request-id"] == str(only_execution().pk)
    assert (
        "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices) == "Hi there"
    )


def test_a_follow_up_without_tools_still_reaches_anthropic(client_for, fake_registry, fake_anthropic, alice):
    agent_on(alice, "anthropic")
    fake_anthropic.reply(text="Done.")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    completion = client_for(alice).chat.completions.create(
        model="anthropic-agent",
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    assert completion.choices[0].message.content == "Done."
    body = last_body(fake_anthropic)
    assert [tool["name"] for tool in body["tools"]] == ["get_weather"] and body["tool_choice"] == {
        "type": "none"
    }
