"""AnthropicPlatform through the official SDK over real HTTP against the fake Anthropic server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from apps.platforms.anthropic import DEFAULT_MAX_TOKENS, OUTPUT_TOOL, AnthropicPlatform
from apps.platforms.base import ChatMessage, Chunk, CompletionRequest, ToolCall, ToolDefinition, Usage
from apps.platforms.errors import PlatformError
from tests.fakes.anthropic_server import AnthropicReply, FakeAnthropicServer
from tests.fakes.server import Fault

KEY = "sk-test-SECRET-1234567890"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog: pytest.LogCaptureFixture):
    """Every test also proves that no log line (the SDK's debug logs included) carries the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter()
    for record in caplog.records:
        assert KEY not in formatter.format(record), record.name


@pytest.fixture
async def platform(fake_anthropic: FakeAnthropicServer) -> AsyncIterator[AnthropicPlatform]:
    instance = AnthropicPlatform(
        api_key=KEY, base_url=fake_anthropic.url, default_model="claude-3-5-haiku-latest"
    )
    yield instance
    await instance.aclose()


def ask(text: str = "Hi", **kwargs) -> CompletionRequest:
    return CompletionRequest(model="claude-test", messages=[ChatMessage(role="user", content=text)], **kwargs)


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def assert_no_key(error: BaseException) -> None:
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert error.__cause__ is None and error.__suppress_context__


# ---------------------------------------------------------------------------------------------- generate
async def test_generate_returns_text_usage_model_and_id(platform, fake_anthropic):
    fake_anthropic.reply(text="Bonjour.", input_tokens=30, output_tokens=4, model="claude-test-20260101")

    completion = await platform.generate(
        ask("Say hello in French", system_prompt="Be brief.", temperature=0.3)
    )

    assert completion.text == "Bonjour."
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(30, 4)
    assert completion.model == "claude-test-20260101"
    assert completion.provider_id and completion.provider_id.startswith("msg_")
    [sent] = fake_anthropic.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."  # top level, not a message
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello in French"}]}
    ]
    assert sent.body["max_tokens"] == DEFAULT_MAX_TOKENS  # required by Anthropic; the request left it open
    assert "temperature" not in sent.body  # not a parameter of the current API (see the module docstring)
    assert "tools" not in sent.body and "tool_choice" not in sent.body and "stream" not in sent.body


async def test_request_max_tokens_and_model_are_sent(platform, fake_anthropic):
    await platform.generate(CompletionRequest(model="", messages=[ChatMessage("user", "Hi")], max_tokens=77))

    body = fake_anthropic.requests[0].body
    assert (body["max_tokens"], body["model"]) == (77, "claude-3-5-haiku-latest")
    assert "system" not in body


async def test_tool_results_go_back_as_tool_result_blocks_in_one_user_turn(platform, fake_anthropic):
    calls = (
        ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Oslo"}),
        ToolCall(id="toolu_2", name="get_weather", arguments={"city": "Bergen"}),
    )
    request = CompletionRequest(
        model="claude-test",
        messages=[
            ChatMessage(role="user", content="Weather in Oslo and Bergen?"),
            ChatMessage(role="assistant", content="Checking both.", tool_calls=calls),
            ChatMessage(role="tool", content='{"temp": 3}', tool_call_id="toolu_1", name="get_weather"),
            ChatMessage(role="tool", content='{"temp": 5}', tool_call_id="toolu_2", name="get_weather"),
            ChatMessage(role="user", content="And which is warmer?"),
        ],
    )

    await platform.generate(request)

    assert fake_anthropic.requests[0].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Bergen"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp": 3}'},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": '{"temp": 5}'},
                {"type": "text", "text": "And which is warmer?"},
            ],
        },
    ]


async def test_generate_with_tools_returns_parsed_tool_calls(platform, fake_anthropic):
    fake_anthropic.reply(
        text="", tool_calls=[{"id": "toolu_9", "name": "get_weather", "arguments": {"city": "Rome"}}]
    )

    completion = await platform.generate(ask("Weather?", tools=[WEATHER]))

    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (ToolCall(id="toolu_9", name="get_weather", arguments={"city": "Rome"}),)
    body = fake_anthropic.requests[0].body
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": dict(WEATHER.parameters),
        }
    ]
    assert "tool_choice" not in body


async def test_json_schema_is_a_forced_output_tool_whose_input_is_the_text(platform, fake_anthropic):
    fake_anthropic.reply(text='{"answer": "42"}')

    completion = await platform.generate(ask("Answer in JSON", json_schema=ANSWER_SCHEMA))

    assert json.loads(completion.text) == {"answer": "42"}
    assert completion.finish_reason == "stop" and completion.tool_calls == ()
    body = fake_anthropic.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}
    [tool] = body["tools"]
    assert (tool["name"], tool["input_schema"]) == (OUTPUT_TOOL, ANSWER_SCHEMA)


async def test_json_schema_that_is_not_an_object_is_wrapped_and_unwrapped(platform, fake_anthropic):
    schema = {"type": "array", "items": {"type": "integer"}}
    fake_anthropic.reply(text='{"value": [1, 2, 3]}')  # what the model puts in the wrapped tool input

    completion = await platform.generate(ask(json_schema=schema))

    assert json.loads(completion.text) == [1, 2, 3]
    assert fake_anthropic.requests[0].body["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"value": schema},
        "required": ["value"],
    }


async def test_json_schema_with_tools_lets_the_model_pick_any_tool(platform, fake_anthropic):
    fake_anthropic.reply(
        text="", tool_calls=[{"id": "toolu_3", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    )

    completion = await platform.generate(ask(json_schema=ANSWER_SCHEMA, tools=[WEATHER]))

    assert completion.finish_reason == "tool_calls"
    body = fake_anthropic.requests[0].body
    assert body["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in body["tools"]] == ["get_weather", OUTPUT_TOOL]


@pytest.mark.parametrize(
    ("reply", "finish"),
    [
        (AnthropicReply(text="cut", finish_reason="max_tokens"), "length"),
        (AnthropicReply(text="I won't.", refusal="I won't."), "content_filter"),
        (AnthropicReply(text="done", finish_reason="stop_sequence"), "stop"),
    ],
    ids=["max_tokens", "refusal", "stop_sequence"],
)
async def test_stop_reasons_are_normalised(platform, fake_anthropic, reply, finish):
    fake_anthropic.reply(reply)
    fake_anthropic.reply(reply)

    assert (await platform.generate(ask())).finish_reason == finish
    assert (await collect(platform.stream(ask())))[-1].finish_reason == finish


# ---------------------------------------------------------------------------------------------- stream
async def test_stream_yields_text_deltas_then_a_final_usage_chunk(platform, fake_anthropic):
    fake_anthropic.reply(text="one two three", input_tokens=9, output_tokens=3)

    chunks = await collect(platform.stream(ask(system_prompt="Count.")))

    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three"]
    assert all(c.finish_reason is None for c in chunks[:-1])
    final = chunks[-1]
    # input from message_start, output from message_delta
    assert (final.text, final.finish_reason, final.usage, final.model) == (
        "",
        "stop",
        Usage(9, 3),
        "claude-test",
    )
    assert final.provider_id and final.provider_id.startswith("msg_")
    body = fake_anthropic.requests[0].body
    assert body["stream"] is True and body["system"] == "Count."
    assert fake_anthropic.outcomes() == (1, 0)


async def test_stream_assembles_tool_input_deltas_into_whole_calls(platform, fake_anthropic):
    fake_anthropic.reply(
        text="Checking.",
        tool_calls=[
            {"id": "toolu_a", "name": "get_weather", "arguments": {"city": "Lima", "units": "metric"}},
            {"id": "toolu_b", "name": "get_weather", "arguments": {"city": "Quito"}},
        ],
    )

    chunks = await collect(platform.stream(ask(tools=[WEATHER])))

    assert "".join(c.text for c in chunks) == "Checking."
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].tool_calls == (
        ToolCall(id="toolu_a", name="get_weather", arguments={"city": "Lima", "units": "metric"}),
        ToolCall(id="toolu_b", name="get_weather", arguments={"city": "Quito"}),
    )


async def test_stream_with_json_schema_streams_the_json_text(platform, fake_anthropic):
    fake_anthropic.reply(text='{"answer": "a fairly long answer"}')

    chunks = await collect(platform.stream(ask(json_schema=ANSWER_SCHEMA)))

    assert len([c for c in chunks if c.text]) > 1  # streamed in pieces, as written
    assert json.loads("".join(c.text for c in chunks)) == {"answer": "a fairly long answer"}
    assert (chunks[-1].finish_reason, chunks[-1].tool_calls) == ("stop", ())


async def test_stream_cut_midway_raises_incomplete_stream_after_the_first_chunks(platform, fake_anthropic):
    fake_anthropic.reply(text="a b c d e f")
    fake_anthropic.fail(Fault("cut_stream", after_chunks=2))
    received: list[str] = []

    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(ask()):
            received.append(chunk.text)

    assert received == ["a ", "b "]
    assert caught.value.kind == "incomplete_stream" and caught.value.retryable


async def test_stream_dropped_midway_is_a_connection_error(platform, fake_anthropic):
    fake_anthropic.reply(text="a b c d")
    fake_anthropic.fail(Fault("cut_stream", after_chunks=2, abrupt=True))
    received: list[str] = []

    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(ask()):
            received.append(chunk.text)

    assert received == ["a ", "b "]
    assert caught.value.kind == "connection" and caught.value.retryable
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("error_type", "kind", "retryable"),
    [("overloaded_error", "server_error", True), ("invalid_request_error", "bad_request", False)],
)
async def test_error_event_midway_maps_by_its_type(platform, fake_anthropic, error_type, kind, retryable):
    fake_anthropic.reply(AnthropicReply(text="a b", stream_error=error_type))
    received: list[str] = []

    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(ask()):
            received.append(chunk.text)

    assert received == ["a ", "b"]
    assert (caught.value.kind, caught.value.retryable) == (kind, retryable)


async def test_cancelling_the_consumer_closes_the_upstream_request(platform, fake_anthropic):
    fake_anthropic.reply(text=" ".join(["word"] * 200), chunk_delay=0.05)
    first_two = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for _ in platform.stream(ask()):
            count += 1
            if count == 2:
                first_two.set()

    task = asyncio.create_task(consume())
    await first_two.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(fake_anthropic.wait_for_disconnect)
    assert fake_anthropic.completed_responses == 0


async def test_a_cancelled_stream_reports_the_usage_anthropic_sent_so_far(platform, fake_anthropic):
    fake_anthropic.reply(text=" ".join(["word"] * 200), chunk_delay=0.05, input_tokens=321)
    reported: list[Usage] = []
    first_two = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for _ in platform.stream(ask(on_usage=reported.append)):
            count += 1
            if count == 2:
                first_two.set()

    task = asyncio.create_task(consume())
    await first_two.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # message_start's counts (input 321, output 1 so far): what Anthropic reported, nothing estimated.
    assert reported == [Usage(321, 1)]


async def test_closing_the_stream_closes_the_upstream_request(platform, fake_anthropic):
    fake_anthropic.reply(text=" ".join(["word"] * 200), chunk_delay=0.05)
    stream = platform.stream(ask())
    received = 0
    async for _ in stream:
        received += 1
        if received == 2:
            break  # leaving the loop does not close an async generator; aclose() does

    await stream.aclose()

    assert await asyncio.to_thread(fake_anthropic.wait_for_disconnect)
    assert fake_anthropic.completed_responses == 0


def test_one_platform_serves_successive_event_loops(fake_anthropic):
    # A Celery task or a sync caller runs each call in a fresh loop (asyncio.run); the pooled connections of
    # a finished loop must not be reused from the next one.
    instance = AnthropicPlatform(
        api_key=KEY, base_url=fake_anthropic.url, default_model="claude-3-5-haiku-latest"
    )

    for _ in range(2):
        assert asyncio.run(instance.generate(ask())).text == "Hello from the fake provider."
        assert asyncio.run(collect(instance.stream(ask())))[-1].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------- faults
FAULTS = [
    pytest.param(Fault("status", status=429, retry_after=7), "rate_limited", True, 429, id="429"),
    pytest.param(Fault("status", status=500), "server_error", True, 500, id="500"),
    pytest.param(Fault("status", status=503), "server_error", True, 503, id="503"),
    pytest.param(Fault("status", status=529), "server_error", True, 529, id="529-overloaded"),
    pytest.param(Fault("status", status=400), "bad_request", False, 400, id="400"),
    pytest.param(Fault("status", status=401), "auth", False, 401, id="401"),
    pytest.param(Fault("status", status=403), "auth", False, 403, id="403"),
    pytest.param(Fault("status", status=404), "not_found", False, 404, id="404"),
    pytest.param(Fault("malformed_json"), "malformed_response", True, None, id="malformed"),
    pytest.param(Fault("drop_connection"), "connection", True, None, id="dropped"),
    pytest.param(Fault("hang"), "timeout", True, None, id="hang"),
]


async def fail_with(platform: AnthropicPlatform, *, streaming: bool, hang: bool = False) -> PlatformError:
    # Short only for a hang: another fault answered late on a loaded machine must not read as a timeout.
    request = ask(timeout=0.5 if hang else 10)
    with pytest.raises(PlatformError) as caught:
        if streaming:
            await collect(platform.stream(request))
        else:
            await platform.generate(request)
    return caught.value


@pytest.mark.parametrize("streaming", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(("fault", "kind", "retryable", "status"), FAULTS)
async def test_each_fault_maps_to_its_platform_error(
    platform, fake_anthropic, fault, kind, retryable, status, streaming
):
    fake_anthropic.fail(fault)

    error = await fail_with(platform, streaming=streaming, hang=fault.kind == "hang")

    assert (error.provider, error.kind, error.retryable, error.status) == (
        "anthropic",
        kind,
        retryable,
        status,
    )
    assert error.retry_after == (7.0 if status == 429 else None)
    assert len(fake_anthropic.requests) == 1  # the SDK's own retries are off
    assert_no_key(error)


async def test_auth_error_echoing_the_key_is_scrubbed(platform, fake_anthropic):
    fake_anthropic.fail(Fault("status", status=401))

    error = await fail_with(platform, streaming=False)

    assert "invalid API key: [redacted]" in error.message  # the fake did echo it whole
    assert_no_key(error)


async def test_slow_first_byte_within_the_timeout_still_answers(platform, fake_anthropic):
    fake_anthropic.fail(Fault("slow_first_byte", delay=0.2))

    chunks = await collect(platform.stream(ask(timeout=5)))

    assert "".join(c.text for c in chunks) == "Hello from the fake provider."


async def test_requests_go_through_the_sdks_aiohttp_transport(platform):
    # sdk_platform.py: the SDK's aiohttp transport (DefaultAioHttpClient) instead of its pure-Python httpx2 pool.
    assert (await platform.generate(ask())).text == "Hello from the fake provider."

    session = platform._clients.get()._client._transport.client
    assert isinstance(session, aiohttp.ClientSession)
    assert not session.closed
