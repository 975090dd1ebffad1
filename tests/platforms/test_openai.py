"""OpenAIPlatform through the official SDK over real HTTP against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from apps.platforms.base import ChatMessage, Chunk, CompletionRequest, ToolCall, ToolDefinition, Usage
from apps.platforms.errors import PlatformError
from apps.platforms.openai import OpenAIPlatform
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.server import Fault

KEY = "sk-test-SECRET-1234567890"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog: pytest.LogCaptureFixture):
    """Every test also proves that no log line (the SDK's debug logs included) carries the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter()
    for record in caplog.records:
        assert KEY not in formatter.format(record), record.name


@pytest.fixture
async def platform(fake_openai: FakeOpenAIServer) -> AsyncIterator[OpenAIPlatform]:
    instance = OpenAIPlatform(api_key=KEY, base_url=f"{fake_openai.url}/v1", default_model="gpt-4o-mini")
    yield instance
    await instance.aclose()


def ask(text: str = "Hi", **kwargs) -> CompletionRequest:
    return CompletionRequest(model="gpt-4o-mini", messages=[ChatMessage(role="user", content=text)], **kwargs)


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def assert_no_key(error: BaseException) -> None:
    assert KEY not in str(error)
    assert KEY not in repr(error)
    # Nothing chained either: a logged traceback would print the SDK exception, whose message may hold it.
    assert error.__cause__ is None and error.__suppress_context__


# ---------------------------------------------------------------------------------------------- generate
async def test_generate_returns_text_usage_model_and_id(platform, fake_openai):
    fake_openai.reply(
        text="Paris is the capital.", input_tokens=21, output_tokens=5, model="gpt-4o-mini-2024"
    )

    completion = await platform.generate(ask("Capital of France?", system_prompt="Be brief."))

    assert completion.text == "Paris is the capital."
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(21, 5)
    assert completion.model == "gpt-4o-mini-2024"
    assert completion.provider_id and completion.provider_id.startswith("chatcmpl-")
    [sent] = fake_openai.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert "stream" not in sent.body and "response_format" not in sent.body and "tools" not in sent.body


async def test_no_system_message_without_a_system_prompt(platform, fake_openai):
    await platform.generate(ask("Hi"))

    assert [m["role"] for m in fake_openai.requests[0].body["messages"]] == ["user"]


async def test_conversation_with_tool_calls_and_results_is_sent_in_openai_shape(platform, fake_openai):
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"})
    request = CompletionRequest(
        model="gpt-4o",
        messages=[
            ChatMessage(role="user", content="Weather in Oslo?"),
            ChatMessage(role="assistant", tool_calls=(call,)),
            ChatMessage(role="tool", content='{"temp": 3}', tool_call_id="call_1", name="get_weather"),
        ],
        temperature=0.2,
        max_tokens=50,
    )

    await platform.generate(request)

    body = fake_openai.requests[0].body
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    ]
    assert body["temperature"] == 0.2
    # An OpenAI-compatible server (base_url set) gets the widely supported `max_tokens`.
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body


async def test_openai_itself_gets_max_completion_tokens(fake_openai, monkeypatch):
    # No base_url: the SDK's default endpoint, pointed at the fake through the SDK's own environment variable.
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake_openai.url}/v1")
    instance = OpenAIPlatform(api_key=KEY, default_model="gpt-4o-mini")
    try:
        await instance.generate(ask(max_tokens=64))
    finally:
        await instance.aclose()

    body = fake_openai.requests[0].body
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


async def test_compatible_server_without_a_key(fake_openai):
    instance = OpenAIPlatform(api_key="", base_url=f"{fake_openai.url}/v1", default_model="llama3")
    try:
        completion = await instance.generate(
            CompletionRequest(model="", messages=[ChatMessage("user", "Hi")])
        )
    finally:
        await instance.aclose()

    assert completion.text == "Hello from the fake provider."
    assert fake_openai.requests[0].body["model"] == "llama3"  # the default model fills an empty one


async def test_json_schema_is_requested_as_response_format(platform, fake_openai):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fake_openai.reply(text='{"answer": "42"}')

    completion = await platform.generate(ask("Answer in JSON", json_schema=schema))

    assert completion.text == '{"answer": "42"}'
    assert fake_openai.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},
    }


async def test_generate_with_tools_returns_parsed_tool_calls(platform, fake_openai):
    fake_openai.reply(
        text="", tool_calls=[{"id": "call_9", "name": "get_weather", "arguments": {"city": "Rome"}}]
    )

    completion = await platform.generate(ask("Weather?", tools=[WEATHER]))

    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (ToolCall(id="call_9", name="get_weather", arguments={"city": "Rome"}),)
    assert fake_openai.requests[0].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": dict(WEATHER.parameters),
            },
        }
    ]


async def test_length_and_content_filter_finish_reasons_are_kept(platform, fake_openai):
    fake_openai.reply(text="cut", finish_reason="length")
    fake_openai.reply(text="", finish_reason="content_filter")

    assert (await platform.generate(ask())).finish_reason == "length"
    assert (await platform.generate(ask())).finish_reason == "content_filter"


async def test_refusal_is_a_refusal_error(platform, fake_openai):
    fake_openai.reply(refusal="I can't help with that.")

    with pytest.raises(PlatformError) as caught:
        await platform.generate(ask())

    assert caught.value.kind == "refusal" and not caught.value.retryable
    assert "I can't help with that." in caught.value.message


# ---------------------------------------------------------------------------------------------- stream
async def test_stream_yields_text_deltas_then_a_final_usage_chunk(platform, fake_openai):
    fake_openai.reply(text="one two three", input_tokens=9, output_tokens=3)

    chunks = await collect(platform.stream(ask(system_prompt="Count.")))

    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three"]
    assert all(c.finish_reason is None for c in chunks[:-1])
    final = chunks[-1]
    assert (final.text, final.finish_reason, final.usage, final.model) == (
        "",
        "stop",
        Usage(9, 3),
        "gpt-4o-mini",
    )
    assert final.provider_id and final.provider_id.startswith("chatcmpl-")
    body = fake_openai.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Count."}
    assert fake_openai.outcomes() == (1, 0)


async def test_both_calls_send_the_key_and_the_timeout_as_a_client_option_not_in_the_body(
    platform, fake_openai
):
    """The adapter posts the body it builds with the client's post() (openai.py says why), so the client's
    auth and a request's own timeout must still apply, and the timeout must not leak into the JSON."""
    fake_openai.reply(text="a")
    fake_openai.reply(text="b")
    await platform.generate(ask(timeout=5))
    await collect(platform.stream(ask(timeout=5)))
    generate, stream = fake_openai.requests
    for sent in (generate, stream):
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.headers["content-type"] == "application/json"
        assert "timeout" not in sent.body
    assert stream.body["stream"] is True and stream.body["stream_options"] == {"include_usage": True}


async def test_stream_assembles_tool_call_deltas_into_whole_calls(platform, fake_openai):
    fake_openai.reply(
        text="Checking.",
        tool_calls=[
            {"id": "call_a", "name": "get_weather", "arguments": {"city": "Lima", "units": "metric"}},
            {"id": "call_b", "name": "get_weather", "arguments": {"city": "Quito"}},
        ],
    )

    chunks = await collect(platform.stream(ask(tools=[WEATHER])))

    assert "".join(c.text for c in chunks) == "Checking."
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].tool_calls == (
        ToolCall(id="call_a", name="get_weather", arguments={"city": "Lima", "units": "metric"}),
        ToolCall(id="call_b", name="get_weather", arguments={"city": "Quito"}),
    )
    assert all(not c.tool_calls for c in chunks[:-1])


async def test_stream_without_usage_is_accepted_when_it_finished(platform, fake_openai):
    fake_openai.omit_stream_usage = True  # like a compatible server that ignores include_usage

    chunks = await collect(platform.stream(ask()))

    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(0, 0)  # what was reported (nothing), never an estimate


async def test_stream_cut_midway_raises_incomplete_stream_after_the_first_chunks(platform, fake_openai):
    fake_openai.reply(text="a b c d e f")
    fake_openai.fail(Fault("cut_stream", after_chunks=2))
    received: list[str] = []

    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(ask()):
            received.append(chunk.text)

    assert received == ["a ", "b "]
    assert caught.value.kind == "incomplete_stream" and caught.value.retryable


async def test_stream_cut_without_usage_is_still_incomplete(platform, fake_openai):
    fake_openai.omit_stream_usage = True
    fake_openai.fail(Fault("cut_stream", after_chunks=1))

    with pytest.raises(PlatformError) as caught:
        await collect(platform.stream(ask()))

    assert caught.value.kind == "incomplete_stream"


async def test_stream_dropped_midway_is_a_connection_error(platform, fake_openai):
    fake_openai.reply(text="a b c d")
    fake_openai.fail(Fault("cut_stream", after_chunks=2, abrupt=True))
    received: list[str] = []

    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(ask()):
            received.append(chunk.text)

    assert received == ["a ", "b "]
    assert caught.value.kind == "connection" and caught.value.retryable


async def test_stream_refusal_is_a_refusal_error(platform, fake_openai):
    fake_openai.reply(text="", refusal="No.")

    with pytest.raises(PlatformError) as caught:
        await collect(platform.stream(ask()))

    assert caught.value.kind == "refusal"


async def test_cancelling_the_consumer_closes_the_upstream_request(platform, fake_openai):
    fake_openai.reply(text=" ".join(["word"] * 200), chunk_delay=0.05)
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

    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    assert fake_openai.completed_responses == 0


async def test_closing_the_stream_closes_the_upstream_request(platform, fake_openai):
    fake_openai.reply(text=" ".join(["word"] * 200), chunk_delay=0.05)
    stream = platform.stream(ask())
    received = 0
    async for _ in stream:
        received += 1
        if received == 2:
            break  # leaving the loop does not close an async generator; aclose() does

    await stream.aclose()

    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)
    assert fake_openai.completed_responses == 0


def test_one_platform_serves_successive_event_loops(fake_openai):
    # A Celery task or a sync caller runs each call in a fresh loop (asyncio.run); the pooled connections of
    # a finished loop must not be reused from the next one.
    instance = OpenAIPlatform(api_key=KEY, base_url=f"{fake_openai.url}/v1", default_model="gpt-4o-mini")

    for _ in range(2):
        assert asyncio.run(instance.generate(ask())).text == "Hello from the fake provider."
        assert asyncio.run(collect(instance.stream(ask())))[-1].finish_reason == "stop"


async def test_aclose_closes_another_threads_loop_client_on_that_loop(fake_openai, monkeypatch):
    # An ASGI server's loop runs in its own thread; the registry may be closed from another loop (a test's, a
    # management command's). Each loop's connections must be closed by that loop's own thread: touching a
    # running loop's selector from elsewhere can leave a dead fd registered, and the next connection given
    # that fd number is then never read.
    instance = OpenAIPlatform(api_key=KEY, base_url=f"{fake_openai.url}/v1", default_model="gpt-4o-mini")
    closed_in: list[int] = []
    client_close = instance._clients._close

    async def recording_close(client):
        closed_in.append(threading.get_ident())
        await client_close(client)

    monkeypatch.setattr(instance._clients, "_close", recording_close)
    server_loop = asyncio.new_event_loop()
    server_thread = threading.Thread(target=server_loop.run_forever, name="other-loop", daemon=True)
    server_thread.start()
    try:
        answer = asyncio.run_coroutine_threadsafe(instance.generate(ask()), server_loop).result(timeout=10)
        assert answer.text == "Hello from the fake provider."
        assert (await instance.generate(ask())).text == "Hello from the fake provider."

        await instance.aclose()

        assert sorted(closed_in) == sorted([threading.get_ident(), server_thread.ident])
    finally:
        server_loop.call_soon_threadsafe(server_loop.stop)
        server_thread.join(timeout=5)
        server_loop.close()


# ---------------------------------------------------------------------------------------------- faults
FAULTS = [
    pytest.param(Fault("status", status=429, retry_after=7), "rate_limited", True, 429, id="429"),
    pytest.param(Fault("status", status=500), "server_error", True, 500, id="500"),
    pytest.param(Fault("status", status=503), "server_error", True, 503, id="503"),
    pytest.param(Fault("status", status=400), "bad_request", False, 400, id="400"),
    pytest.param(Fault("status", status=422), "bad_request", False, 422, id="422"),
    pytest.param(Fault("status", status=401), "auth", False, 401, id="401"),
    pytest.param(Fault("status", status=403), "auth", False, 403, id="403"),
    pytest.param(Fault("status", status=404), "not_found", False, 404, id="404"),
    pytest.param(
        Fault("status", status=400, code="content_policy_violation"), "refusal", False, 400, id="policy"
    ),
    pytest.param(Fault("malformed_json"), "malformed_response", True, None, id="malformed"),
    # JSON nested past the parser's recursion limit: RecursionError, not ValueError, from json.loads.
    pytest.param(
        Fault("malformed_json", body=b"[" * 100_000 + b"]" * 100_000),
        "malformed_response",
        True,
        None,
        id="nested-too-deep",
    ),
    pytest.param(Fault("drop_connection"), "connection", True, None, id="dropped"),
    pytest.param(Fault("hang"), "timeout", True, None, id="hang"),
]


async def fail_with(platform: OpenAIPlatform, *, streaming: bool, hang: bool = False) -> PlatformError:
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
    platform, fake_openai, fault, kind, retryable, status, streaming
):
    fake_openai.fail(fault)

    error = await fail_with(platform, streaming=streaming, hang=fault.kind == "hang")

    assert (error.provider, error.kind, error.retryable, error.status) == ("openai", kind, retryable, status)
    assert error.retry_after == (7.0 if status == 429 else None)
    assert len(fake_openai.requests) == 1  # the SDK's own retries are off
    assert_no_key(error)


# A 200 whose JSON is not the shape of a chat.completion (a compatible server's bug, a proxy's page): the
# answer is parsed as plain JSON (openai.py), so each wrong type must surface as malformed_response, never as
# a Completion holding it (a number as the text reached the row before: the SDK's models do not check types).
WRONG_SHAPES = [
    pytest.param([1, 2], "expected a chat.completion, got list", id="a-list"),
    pytest.param({"choices": []}, "IndexError", id="no-choices"),
    pytest.param({"id": "x"}, "KeyError", id="no-choices-key"),
    pytest.param(
        {"choices": [{"message": {"content": 5}, "finish_reason": "stop"}]}, "expected a string", id="number"
    ),
    pytest.param({"choices": [{"message": {"content": "hi"}}]}, "no finish_reason", id="no-finish"),
    pytest.param(
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        "expected a string",
        id="arguments-not-a-string",
    ),
]


@pytest.mark.parametrize(("body", "problem"), WRONG_SHAPES)
async def test_a_json_answer_of_the_wrong_shape_is_malformed(
    platform, fake_openai, monkeypatch, body, problem
):
    monkeypatch.setattr(fake_openai, "completion_body", lambda reply, request: body)

    error = await fail_with(platform, streaming=False)

    assert (error.kind, error.retryable) == ("malformed_response", True)
    assert problem in str(error)


async def test_auth_error_echoing_the_key_is_scrubbed(platform, fake_openai):
    fake_openai.fail(Fault("status", status=401))

    error = await fail_with(platform, streaming=False)

    assert "Incorrect API key provided: [redacted]" in error.message  # the fake did echo it whole
    assert_no_key(error)


async def test_slow_first_byte_within_the_timeout_still_answers(platform, fake_openai):
    fake_openai.fail(Fault("slow_first_byte", delay=0.2))

    completion = await platform.generate(ask(timeout=5))

    assert completion.text == "Hello from the fake provider."


async def test_a_timed_out_request_is_closed(platform, fake_openai):
    fake_openai.fail(Fault("hang"))

    await fail_with(platform, streaming=False, hang=True)

    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)


async def test_fake_lists_models_to_the_sdk(fake_openai):
    client = openai.AsyncOpenAI(api_key=KEY, base_url=f"{fake_openai.url}/v1", max_retries=0)
    try:
        page = await client.models.list()
    finally:
        await client.close()

    assert [m.id for m in page.data] == ["gpt-4o-mini", "gpt-4o"]


async def test_requests_go_through_the_sdks_aiohttp_transport(platform):
    # sdk_platform.py: the SDK's aiohttp transport (DefaultAioHttpClient) instead of its pure-Python httpx2 pool.
    assert (await platform.generate(ask())).text == "Hello from the fake provider."

    session = platform._clients.get()._client._transport.client
    assert isinstance(session, aiohttp.ClientSession)
    assert not session.closed
