"""GeminiPlatform through the real google-genai SDK, over HTTP, against the fake Gemini server: how requests
and answers are mapped. Faults, cancellation and key hygiene: test_gemini_faults.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apps.platforms.base import ChatMessage, CompletionRequest, ToolCall, ToolDefinition
from apps.platforms.gemini import GENERATED_ID_PREFIX, SKIP_SIGNATURE, GeminiPlatform
from tests.fakes.gemini_server import FakeGeminiServer, GeminiReply
from tests.platforms.gemini_support import KEY, MODEL, ask, collect, failure, make_platform

WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
async def gemini(fake_gemini: FakeGeminiServer) -> AsyncIterator[GeminiPlatform]:
    platform = make_platform(fake_gemini.url)
    yield platform
    await platform.aclose()


def declaration_schema(declaration: dict[str, Any]) -> Any:
    # The SDK dumps FunctionDeclaration with snake_case keys; Google's JSON parser accepts both spellings.
    return declaration.get("parametersJsonSchema", declaration.get("parameters_json_schema"))


# ---------------------------------------------------------------------- text, usage, request shape
async def test_generate_returns_text_usage_model_and_id(gemini, fake_gemini):
    fake_gemini.reply(
        text="Bonjour tout le monde", input_tokens=13, output_tokens=5, model="gemini-2.5-flash-001"
    )

    completion = await gemini.generate(ask())

    assert completion.text == "Bonjour tout le monde"
    assert completion.finish_reason == "stop"
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (13, 5)
    assert completion.model == "gemini-2.5-flash-001"
    assert completion.provider_id and completion.provider_id.startswith("fake-gemini-")
    [sent] = fake_gemini.requests
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    # The key goes in a header, never in the URL.
    assert sent.headers["x-goog-api-key"] == KEY
    assert "key=" not in sent.query


async def test_stream_yields_deltas_then_final_chunk_with_usage(gemini, fake_gemini):
    fake_gemini.reply(text="one two three", input_tokens=21, output_tokens=3)

    chunks = await collect(gemini, ask())

    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three"]
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 3)
    assert final.model == MODEL
    [sent] = fake_gemini.requests
    assert sent.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert sent.query == "alt=sse"


async def test_request_maps_system_roles_and_generation_options(gemini, fake_gemini):
    request = CompletionRequest(
        model="gemini-2.5-pro",
        system_prompt="You are terse.",
        messages=[
            ChatMessage(role="system", content="Answer in French."),
            ChatMessage(role="user", content="Hello"),
            ChatMessage(role="assistant", content="Bonjour"),
            ChatMessage(role="user", content="Again"),
        ],
        temperature=0.25,
        max_tokens=64,
    )

    await gemini.generate(request)

    [sent] = fake_gemini.requests
    assert sent.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    # The system prompt is Gemini's top-level systemInstruction, never a turn of `contents`.
    assert sent.body["systemInstruction"]["parts"] == [{"text": "You are terse.\n\nAnswer in French."}]
    assert [(c["role"], c["parts"]) for c in sent.body["contents"]] == [
        ("user", [{"text": "Hello"}]),
        ("model", [{"text": "Bonjour"}]),
        ("user", [{"text": "Again"}]),
    ]
    config = sent.body["generationConfig"]
    assert config["temperature"] == 0.25
    assert config["maxOutputTokens"] == 64
    assert "responseMimeType" not in config and "tools" not in sent.body


async def test_json_schema_and_tools_request_shape(gemini, fake_gemini):
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 0}},
        "required": ["score"],
    }
    fake_gemini.reply(text='{"score": 3}')

    completion = await gemini.generate(ask("Rate it", json_schema=schema, tools=[WEATHER]))

    assert completion.text == '{"score": 3}'
    [sent] = fake_gemini.requests
    config = sent.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    [tool] = sent.body["tools"]
    [declaration] = tool["functionDeclarations"]
    assert declaration["name"] == "get_weather"
    assert declaration["description"] == "Weather for a city"
    assert declaration_schema(declaration) == WEATHER.parameters


# ---------------------------------------------------------------------- function calls
async def test_function_calls_map_to_tool_calls_with_ids(gemini, fake_gemini):
    fake_gemini.reply(
        text="",
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"id": "gm-own-7", "name": "get_weather", "arguments": {"city": "Oslo"}},
        ],
    )

    completion = await gemini.generate(ask("Weather?", tools=[WEATHER]))

    assert completion.finish_reason == "tool_calls"
    first, second = completion.tool_calls
    assert (first.name, dict(first.arguments)) == ("get_weather", {"city": "Paris"})
    assert first.id.startswith(GENERATED_ID_PREFIX)  # Gemini gave none
    assert (second.id, dict(second.arguments)) == ("gm-own-7", {"city": "Oslo"})


async def test_streamed_function_calls_arrive_on_the_final_chunk(gemini, fake_gemini):
    fake_gemini.reply(text="Checking", tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])

    chunks = await collect(gemini, ask("Weather?", tools=[WEATHER]))

    assert [c.text for c in chunks[:-1]] == ["Checking"]
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    [call] = final.tool_calls
    assert (call.name, dict(call.arguments)) == ("get_weather", {"city": "Rome"})


async def test_tool_calls_and_results_are_sent_back_as_gemini_parts(gemini, fake_gemini):
    generated = ToolCall(id=f"{GENERATED_ID_PREFIX}abc", name="get_weather", arguments={"city": "Paris"})
    own = ToolCall(id="gm-own-7", name="get_weather", arguments={"city": "Oslo"})
    history = [
        ChatMessage(role="user", content="Weather in Paris and Oslo?"),
        ChatMessage(role="assistant", content="", tool_calls=(generated, own)),
        ChatMessage(role="tool", content='{"temp": 21}', tool_call_id=generated.id),
        ChatMessage(role="tool", content="rainy", tool_call_id=own.id, name="get_weather"),
    ]

    await gemini.generate(CompletionRequest(model=MODEL, messages=history, tools=[WEATHER]))

    [sent] = fake_gemini.requests
    user, model_turn, results = sent.body["contents"]
    assert user["role"] == "user"
    assert model_turn["role"] == "model"
    first, second = model_turn["parts"]
    # Our generated id is never sent as if Gemini had issued it; Gemini's own id goes back.
    assert first["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert second["functionCall"] == {"id": "gm-own-7", "name": "get_weather", "args": {"city": "Oslo"}}
    # Without the real signature, the first call carries the documented skip-validation sentinel (Gemini 3).
    assert base64.b64decode(first["thoughtSignature"]) == SKIP_SIGNATURE
    assert "thoughtSignature" not in second
    # Both results in one user turn; the name comes from the call when the tool message has none.
    assert results["role"] == "user"
    assert [p["functionResponse"] for p in results["parts"]] == [
        {"name": "get_weather", "response": {"temp": 21}},
        {"id": "gm-own-7", "name": "get_weather", "response": {"output": "rainy"}},
    ]


async def test_thought_signature_is_replayed_on_the_next_turn(gemini, fake_gemini):
    fake_gemini.reply(
        text="",
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Lima"}, "thought_signature": "sig-42"}],
    )
    [call] = (await gemini.generate(ask("Weather?", tools=[WEATHER]))).tool_calls
    history = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", tool_calls=(call,)),
        ChatMessage(role="tool", content="sunny", tool_call_id=call.id),
    ]

    await gemini.generate(CompletionRequest(model=MODEL, messages=history, tools=[WEATHER]))

    [part] = fake_gemini.requests[-1].body["contents"][1]["parts"]
    assert base64.b64decode(part["thoughtSignature"]) == b"sig-42"


# ---------------------------------------------------------------------- finish reasons and refusals
async def test_max_tokens_maps_to_length(gemini, fake_gemini):
    fake_gemini.reply(text="cut", finish_reason="MAX_TOKENS")
    fake_gemini.reply(text="cut here", finish_reason="MAX_TOKENS")

    assert (await gemini.generate(ask())).finish_reason == "length"
    assert (await collect(gemini, ask()))[-1].finish_reason == "length"


@pytest.mark.parametrize("streaming", [False, True])
async def test_continuation_checkpoint_is_not_followed_by_a_hidden_request(gemini, fake_gemini, streaming):
    # The SDK resumes CONTINUATION stops by itself, re-sending the request; the adapter turns that off.
    fake_gemini.reply(GeminiReply(text="part one", finish_reason="CONTINUATION", continuation_token="tok-1"))
    fake_gemini.reply(text="part two")

    if streaming:
        chunks = await collect(gemini, ask())
        text, finish = "".join(c.text for c in chunks), chunks[-1].finish_reason
    else:
        completion = await gemini.generate(ask())
        text, finish = completion.text, completion.finish_reason

    assert (text, finish) == ("part one", "length")
    assert len(fake_gemini.requests) == 1


async def test_safety_stop_without_text_is_a_refusal(gemini, fake_gemini):
    fake_gemini.reply(refusal="blocked")
    fake_gemini.reply(refusal="blocked")

    for streaming in (False, True):
        error = await failure(gemini, ask(), streaming=streaming)
        assert (error.kind, error.retryable, error.provider) == ("refusal", False, "gemini")
        assert "SAFETY" in error.message


@pytest.mark.parametrize("streaming", [False, True])
async def test_blocked_prompt_is_a_refusal(gemini, fake_gemini, streaming):
    fake_gemini.reply(GeminiReply(block_reason="PROHIBITED_CONTENT"))

    error = await failure(gemini, ask(), streaming=streaming)

    assert (error.kind, error.retryable) == ("refusal", False)
    assert "PROHIBITED_CONTENT" in error.message


async def test_safety_stop_after_streamed_text_ends_as_content_filter(gemini, fake_gemini):
    fake_gemini.reply(text="Here is how to", finish_reason="SAFETY")

    chunks = await collect(gemini, ask())

    assert "".join(c.text for c in chunks) == "Here is how to"
    assert chunks[-1].finish_reason == "content_filter"
    assert chunks[-1].usage is not None


async def test_malformed_function_call_finish_is_a_retryable_malformed_response(gemini, fake_gemini):
    fake_gemini.reply(text="", finish_reason="MALFORMED_FUNCTION_CALL")

    error = await failure(gemini, ask(), streaming=False)

    assert (error.kind, error.retryable) == ("malformed_response", True)


def test_one_platform_serves_successive_event_loops(fake_gemini):
    """Celery tasks and sync callers run each call in a fresh loop (asyncio.run): a connection pooled on a
    dead loop must not be reused. google-genai keeps a pool per loop when it owns its httpx client (here)."""
    platform = make_platform(fake_gemini.url)
    fake_gemini.reply(text="first")
    fake_gemini.reply(text="second")

    texts = [asyncio.run(platform.generate(ask())).text for _ in range(2)]
    asyncio.run(platform.aclose())

    assert texts == ["first", "second"]


async def test_the_sdk_sends_through_httpx_even_with_aiohttp_installed(gemini, fake_gemini):
    # The stream tracking (gemini.py) needs httpx's event hook; with aiohttp installed the SDK would pick it
    # unless given a transport, and a transport it is given has one pool per event loop (PerLoopTransport).
    fake_gemini.reply(text="Hello")

    assert (await gemini.generate(ask())).text == "Hello"

    assert not gemini._client._api_client._use_aiohttp()
    assert fake_gemini.requests
