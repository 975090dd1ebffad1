"""How a chat completion request becomes an agent run (pure: no server, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from apps.agents.openai_compat.errors import OpenAIError
from apps.agents.openai_compat.schemas import parse_chat_request
from apps.platforms.base import ImagePart, Sampling, ToolCall, ToolChoice


def parse(**body: Any):  # type: ignore[no-untyped-def]
    body.setdefault("model", "greeter")
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return parse_chat_request(body, max_messages=50, max_chars=1000)


def refused(**body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        parse(**body)
    assert caught.value.status == 400
    return caught.value


def test_the_last_user_message_is_the_task_and_the_rest_the_history():
    chat = parse(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": None},
            {"role": "developer", "content": "Use French."},
            {"role": "user", "content": "Name?"},
        ]
    )
    assert chat.input_data() == {"task": "Name?"}
    assert chat.context() == {
        "conversation_history": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": ""},
        ],
        "metadata": {"openai_compat": {"system": "Be brief.\n\nUse French."}},
    }
    # Engine field paths are reported as the client's own message indices.
    assert chat.param_for("input_data.task") == "messages[4].content"
    assert chat.param_for("context.conversation_history[1].content") == "messages[2].content"
    assert chat.param_for("context.conversation_history") == "messages"


def test_a_plain_request_adds_nothing_to_the_context():
    chat = parse()
    assert chat.context() == {} and chat.overrides() == {}
    assert (chat.stream, chat.include_usage, chat.temperature, chat.max_tokens) == (False, False, None, None)


def test_max_completion_tokens_wins_over_the_legacy_max_tokens():
    assert parse(max_tokens=10, max_completion_tokens=20).max_tokens == 20
    assert parse(max_tokens=10).max_tokens == 10


def test_json_object_response_format_asks_the_agent_for_json():
    assert parse(response_format={"type": "json_object"}).input_data() == {
        "task": "Hi",
        "output_format": "json",
    }
    assert parse(response_format={"type": "text"}).input_data() == {"task": "Hi"}


def test_stream_options():
    chat = parse(stream=True, stream_options={"include_usage": True})
    assert (chat.stream, chat.include_usage) == (True, True)
    assert refused(stream_options={"include_usage": True}).param == "stream_options"
    assert (
        refused(stream=True, stream_options={"include_usage": "yes"}).param == "stream_options.include_usage"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 51}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
            "messages[0].tool_calls[0].function",
        ),
        (
            {"messages": [{"role": "system", "content": "x" * 1001}, {"role": "user", "content": "Hi"}]},
            "messages",
        ),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"max_tokens": 200_001}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"stream": "true"}, "stream"),
        ({"n": 3}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.json_schema.name"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logprobs": True, "stream": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "tool", "tool_call_id": "nope", "content": "x"},
                ]
            },
            "messages[1].tool_call_id",
        ),
    ],
)
def test_what_an_agent_run_cannot_take_is_refused_naming_the_parameter(body, param):
    error = refused(**body)
    assert error.param == param
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(OpenAIError):
        parse_chat_request([1, 2], max_messages=5, max_chars=10)


def test_generation_options_become_typed_sampling_options():
    chat = parse(top_p=0.5, stop=["\n"], seed=1, user="u-1", presence_penalty=0.1, frequency_penalty=-1, n=1)
    assert chat.input_data() == {"task": "Hi"}
    options = chat.options()
    assert options is not None
    assert options.sampling == Sampling(
        stop=("\n",), seed=1, top_p=0.5, presence_penalty=0.1, frequency_penalty=-1, user="u-1"
    )
    # Recorded on the execution with the other overrides.
    assert chat.context()["metadata"]["openai_compat"]["stop"] == ["\n"]
    assert parse(stop="END").sampling.stop == ("END",)


def test_a_plain_request_has_no_run_options():
    harmless = {"store": True, "parallel_tool_calls": False, "metadata": {"k": "v"}}
    assert (
        parse(**harmless, prompt_cache_key="k", service_tier="auto", reasoning_effort=None).options() is None
    )
    assert parse(safety_identifier="s-1").sampling.user == "s-1"
    assert refused(reasoning_effort="high").param == "reasoning_effort"
    assert refused(service_tier="priority").param == "service_tier"


def test_client_tools_and_their_results_become_the_conversation():
    chat = parse(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    assert chat.input_data() == {"task": "Weather in Paris?"}
    options = chat.options()
    assert options is not None and options.messages is not None
    assert [m.role for m in options.messages] == ["user", "assistant", "tool"]
    assert options.messages[1].tool_calls == (ToolCall("call_1", "weather", {"city": "Paris"}),)
    assert (options.messages[2].tool_call_id, options.messages[2].name) == ("call_1", "weather")
    assert options.tool_choice == ToolChoice("function", "weather")
    assert [tool.name for tool in options.client_tools] == ["weather"]


def test_images_must_be_data_urls():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    chat = parse(messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}])
    options = chat.options()
    assert options is not None and options.messages is not None
    assert options.messages[0].images == (ImagePart("image/png", "iVBORw0KGgo="),)
    assert chat.task == "What is it?"
    fetched = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    error = refused(messages=[{"role": "user", "content": [fetched]}])
    assert error.param == "messages[0].content[0].image_url.url" and "never fetches" in error.message


def test_json_schema_response_format_is_checked_and_kept():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = parse(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "A", "schema": schema, "strict": True},
        }
    )
    options = chat.options()
    assert options is not None and options.json_schema == schema and options.json_schema_strict
