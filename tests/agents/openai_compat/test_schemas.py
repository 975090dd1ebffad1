"""How a chat completion request becomes an agent run (pure: no server, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from apps.agents.openai_compat.errors import OpenAIError
from apps.agents.openai_compat.schemas import parse_chat_request


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
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}, "messages[0]"),
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
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ],
)
def test_what_an_agent_run_cannot_take_is_refused_naming_the_parameter(body, param):
    error = refused(**body)
    assert error.param == param
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(OpenAIError):
        parse_chat_request([1, 2], max_messages=5, max_chars=10)


def test_other_openai_parameters_are_accepted_and_ignored():
    chat = parse(top_p=0.5, stop=["\n"], seed=1, user="u-1", presence_penalty=0.1, tool_choice="none", n=1)
    assert chat.input_data() == {"task": "Hi"}
