"""Structured output, tools, deadlines and usage on the REAL bundled SmolLM2-135M (slow: marked local_model).

Seeds are fixed (LocalPlatform(seed=...)), so each test samples the same tokens on every run of one build.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Any

import jsonschema
import pytest

from apps.agents.catalog.loader import load_catalog
from apps.agents.engine.context import AgentConfig
from apps.agents.engine.task_agent import TaskAgent
from apps.platforms.base import ChatMessage, CompletionRequest, ToolDefinition
from apps.platforms.errors import PlatformError
from apps.platforms.local import LocalPlatform
from apps.platforms.local_grammar import build_steps
from apps.platforms.local_model import REFUSAL_PREFIX, Speed
from apps.platforms.registry import PlatformRegistry

pytestmark = pytest.mark.local_model
CATALOG = {entry.agent_id: entry for entry in load_catalog()}


@pytest.fixture
def local() -> LocalPlatform:
    return LocalPlatform(default_model="smollm2-135m-instruct", n_ctx=4096, seed=7)


def ask(text: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(
        model="smollm2-135m-instruct", messages=[ChatMessage(role="user", content=text)], **kwargs
    )


def registry(local: LocalPlatform) -> PlatformRegistry:
    return PlatformRegistry({"local": local}, fallback_order=["local"], default="local")


def set_speed(local: LocalPlatform, speed: Speed) -> None:
    local._shared().speed = speed


@pytest.mark.parametrize(
    ("agent_id", "max_tokens"), [("support-triage", 220), ("ux-writer", 220), ("code-reviewer", 450)]
)
async def test_catalog_schemas_give_valid_output_under_a_fixed_seed(
    local: LocalPlatform, agent_id: str, max_tokens: int
) -> None:
    entry = CATALOG[agent_id]
    assert entry.output_schema is not None and entry.example is not None
    prompt = f"{entry.example.input['task']}\n\nAnswer with JSON matching: {json.dumps(entry.output_schema)}"
    # A small max_tokens: the grammar's caps shrink until the answer fits it (and the test stays short).
    # code-reviewer's ten required criteria need ~300 tokens even with empty lists.
    completion = await local.generate(
        ask(prompt, json_schema=entry.output_schema, max_tokens=max_tokens, temperature=0.3)
    )

    assert completion.finish_reason == "stop", completion.text
    value = json.loads(completion.text)
    jsonschema.validate(value, entry.output_schema)  # the full schema, not the grammar's capped copy
    assert list(value) == [k for k in entry.output_schema["properties"] if k in value]


async def test_integer_ranges_and_key_order_are_honoured(local: LocalPlatform) -> None:
    schema = {
        "type": "object",
        "properties": {
            "zebra": {"type": "integer", "minimum": 3, "maximum": 7},
            "apple": {"type": "integer", "minimum": 1000, "maximum": 5000},
            "mango": {"type": "string", "maxLength": 20},
        },
        "required": ["zebra", "apple", "mango"],
        "additionalProperties": False,
    }
    for seed in (1, 2, 3):
        local.seed = seed
        completion = await local.generate(
            ask("Give a zebra count of 0, an apple count of 99 and a mango name.", json_schema=schema)
        )
        value = json.loads(completion.text)

        assert list(value) == ["zebra", "apple", "mango"]  # schema order, not alphabetical
        assert 3 <= value["zebra"] <= 7  # the prompt asked for 0: the grammar allows only 3..7
        assert 0 <= value["apple"] <= 9999  # a large range: digit-length bound (validation checks the rest)


async def test_json_whose_budget_runs_out_is_closed_validly_not_cut(local: LocalPlatform) -> None:
    # A token limit far below what the model would write: before, generation stopped at the limit with
    # unterminated JSON ("length"), which the engine re-asked; now the answer is steered to its end.
    entry = CATALOG["business-analyst"]
    assert entry.output_schema is not None
    prompt = f"Write user stories for a password reset. JSON: {json.dumps(entry.output_schema)}"
    completion = await local.generate(
        ask(prompt, json_schema=entry.output_schema, max_tokens=160, temperature=0.7)
    )

    assert completion.finish_reason == "stop", completion.text
    assert completion.usage.output_tokens <= 160
    jsonschema.validate(json.loads(completion.text), entry.output_schema)
    await local.run_on_model(lambda llama: None)  # the worker has recorded the run
    assert local.last_run is not None and local.last_run.closed_early


async def test_a_schema_that_may_be_reasked_gets_half_the_time_or_is_refused(local: LocalPlatform) -> None:
    await local.load()
    # Output at 20 tokens/s, prompts free: 4.5 s afford 72 tokens (at the 0.8 safety share), half of it 36.
    set_speed(local, Speed(prompt_tps=1e9, decode_tps=20.0))
    strings = {"type": "array", "items": {"type": "string"}, "minItems": 6}
    exact = {"type": "object", "properties": {"names": strings}, "required": ["names"]}
    inexact = {
        "type": "object",
        "properties": {"names": {**strings, "uniqueItems": True}},
        "required": ["names"],
    }
    (floor,) = {g.floor for g in build_steps(exact)} | {g.floor for g in build_steps(inexact)}
    assert 36 < floor <= 72  # the smallest valid answer fits the time, but not half of it

    with pytest.raises(PlatformError) as caught:
        await local.generate(ask("Six names.", json_schema=inexact, timeout=4.5))
    assert caught.value.message.startswith(REFUSAL_PREFIX) and "a re-ask may follow" in caught.value.message

    # The same schema without uniqueItems (nothing to re-ask) starts answering; closing the stream cancels it.
    async with aclosing(local.stream(ask("Six names.", json_schema=exact, timeout=4.5))) as chunks:
        first = await anext(chunks)
    assert first.text


async def test_fail_fast_refuses_at_once_with_what_to_do(local: LocalPlatform) -> None:
    await local.load()
    set_speed(local, Speed(prompt_tps=5.0, decode_tps=0.5))  # a machine far too slow for this deadline
    started = time.perf_counter()
    with pytest.raises(PlatformError) as caught:
        await local.generate(ask("Write a poem.", timeout=30))

    assert time.perf_counter() - started < 5
    error = caught.value
    assert error.kind == "unavailable" and not error.retryable and error.may_fall_back
    assert error.message.startswith(REFUSAL_PREFIX)
    for hint in ("provider key", "LOCAL_MODEL_PATH", "timeout_seconds"):
        assert hint in error.message
    assert local.last_run is not None and local.last_run.outcome == "refused"


async def test_an_agent_run_is_refused_in_under_five_seconds(local: LocalPlatform) -> None:
    await local.load()
    set_speed(local, Speed(prompt_tps=5.0, decode_tps=0.5))
    entry = CATALOG["business-analyst"]
    agent = TaskAgent(
        AgentConfig(
            agent_id=entry.agent_id,
            name=entry.name,
            system_prompt=entry.system_prompt,
            output_schema=entry.output_schema,
            timeout_seconds=60,
        ),
        registry(local),
    )
    started = time.perf_counter()
    result = await agent.execute({"task": "Say hello in five words."})

    assert time.perf_counter() - started < 5
    assert not result.success and result.error is not None
    assert REFUSAL_PREFIX in result.error.message and "LOCAL_MODEL_PATH" in result.error.message


async def test_a_run_that_times_out_records_the_tokens_it_used(local: LocalPlatform) -> None:
    await local.load()
    set_speed(local, Speed(1e9, 1e9))  # not refused up front: this is about the deadline itself
    chapters = {"type": "array", "minItems": 30, "items": {"type": "string", "minLength": 100}}
    agent = TaskAgent(
        AgentConfig(
            agent_id="writer",
            name="Writer",
            timeout_seconds=15,
            max_retries=0,
            output_schema={"type": "object", "properties": {"chapters": chapters}, "required": ["chapters"]},
        ),
        registry(local),
    )
    # ~1,000 tokens of JSON: structured output is not cut short at the deadline (it would not parse).
    result = await agent.execute({"task": "Write a long story about a dragon, in thirty chapters."})
    await local.run_on_model(lambda llama: None)  # the worker has let go

    assert not result.success and result.error is not None and result.error.code == "timeout"
    assert result.input_tokens > 0 and result.output_tokens > 0
    (attempt,) = result.attempts
    assert attempt.status == "timeout"
    assert (attempt.input_tokens, attempt.output_tokens) == (result.input_tokens, result.output_tokens)


async def test_free_text_ends_before_the_deadline_with_what_it_wrote(local: LocalPlatform) -> None:
    await local.load()
    set_speed(local, Speed(1e9, 1e9))
    completion = await local.generate(ask("Write a very long story about a dragon.", timeout=4))

    assert completion.finish_reason == "length" and completion.text
    assert completion.usage.output_tokens > 0


CALCULATOR = ToolDefinition(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "maxLength": 40}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)


async def test_tool_call_round_trip_on_the_local_model(local: LocalPlatform) -> None:
    local.seed = 3
    question = ChatMessage(role="user", content="Use the calculator tool to compute 12 * 7.")
    first = await local.generate(
        CompletionRequest(model="m", messages=[question], tools=[CALCULATOR], temperature=0.2)
    )

    assert first.finish_reason == "tool_calls" and first.text == ""
    (call,) = first.tool_calls
    assert call.name == "calculator" and isinstance(call.arguments.get("expression"), str)

    # The tool's result goes back; the model may answer (or call again: the grammar admits both shapes).
    turn = ChatMessage(role="assistant", tool_calls=first.tool_calls)
    result = ChatMessage(role="tool", content="84", tool_call_id=call.id, name="calculator")
    second = await local.generate(
        CompletionRequest(model="m", messages=[question, turn, result], tools=[CALCULATOR], temperature=0.2)
    )
    assert second.finish_reason in ("stop", "tool_calls")
    assert second.usage.input_tokens > first.usage.input_tokens
    if second.finish_reason == "stop":
        assert second.text and not second.tool_calls


async def test_task_agent_tool_loop_runs_offline(local: LocalPlatform) -> None:
    local.seed = 3
    agent = TaskAgent(
        AgentConfig(
            agent_id="calc", name="Calc", tools=("calculator",), max_tool_calls=3, timeout_seconds=120
        ),
        registry(local),
    )
    result = await asyncio.wait_for(
        agent.execute({"task": "Use the calculator tool to compute 12 * 7."}), 150
    )

    calls = result.metadata.get("tool_calls", [])
    assert calls and calls[0]["tool"] == "calculator"
    assert result.success or (result.error is not None and result.error.code == "limit_exceeded")
