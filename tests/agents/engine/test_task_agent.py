"""TaskAgent: structured output with validation and re-asks, and the tool loop."""

from __future__ import annotations

import json

from apps.agents.engine import TaskAgent
from apps.agents.engine.context import AgentContext
from apps.agents.engine.events import (
    ExecutionCompleted,
    OutputDelta,
    OutputReset,
    ToolCallEvent,
    ToolResultEvent,
)
from apps.agents.engine.request_options import RequestOptions
from apps.agents.engine.task_agent import ANY_JSON_OBJECT, parse_json_output
from apps.agents.engine.tools import Tool, ToolRegistry, default_tool_registry
from apps.platforms.base import Usage
from tests.agents.engine.conftest import collect
from tests.fakes.platform import platform_error, tool_call

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "priority": {"type": "integer", "minimum": 1}},
    "required": ["title", "priority"],
}
TASK = {"task": "Create a ticket"}


async def test_schema_is_sent_and_valid_json_is_parsed(fake_platforms, make_agent):
    fake_platforms.openai.reply('{"title": "Fix login", "priority": 2}')
    result = await make_agent(output_schema=SCHEMA).execute(TASK)
    assert result.success and result.output == {"title": "Fix login", "priority": 2}
    request = fake_platforms.openai.requests[0]
    assert request.json_schema == SCHEMA
    assert "JSON Schema" in request.messages[0].content


async def test_fenced_json_is_accepted():
    assert parse_json_output('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_output("```\n[1, 2]\n```") == [1, 2]
    assert parse_json_output('  {"a": 1}  ') == {"a": 1}


async def test_invalid_json_is_re_asked_with_the_error_then_valid(fake_platforms, make_agent):
    fake_platforms.openai.reply("Sure! Here is your ticket: title=Fix").reply(
        '```json\n{"title": "Fix login", "priority": 1}\n```'
    )
    result = await make_agent(output_schema=SCHEMA).execute(TASK)
    assert result.success and result.output == {"title": "Fix login", "priority": 1}
    assert result.metadata["reasks"] == 1
    second = fake_platforms.openai.requests[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1].content == "Sure! Here is your ticket: title=Fix"
    assert "not valid JSON" in second.messages[2].content
    # Tokens of both calls are counted.
    assert result.tokens_used == 2 * Usage(10, 5).total_tokens


async def test_schema_violation_is_re_asked_with_the_validation_error(fake_platforms, make_agent):
    fake_platforms.openai.reply('{"title": "Fix"}').reply('{"title": "Fix", "priority": 3}')
    result = await make_agent(output_schema=SCHEMA).execute(TASK)
    assert result.output == {"title": "Fix", "priority": 3}
    assert "'priority' is a required property" in fake_platforms.openai.requests[1].messages[2].content


async def test_schema_never_satisfied_fails_with_invalid_output_after_two_re_asks(fake_platforms, make_agent):
    for _ in range(5):
        fake_platforms.openai.reply('{"title": "Fix", "priority": 0}')
    result = await make_agent(output_schema=SCHEMA).execute(TASK)
    assert result.success is False and result.error.code == "invalid_output"
    assert "priority" in result.error.message
    assert len(fake_platforms.openai.requests) == 3
    assert result.output == '{"title": "Fix", "priority": 0}'  # the last answer, for the record


async def test_output_format_json_without_schema_asks_for_any_object(fake_platforms, make_agent):
    fake_platforms.openai.reply('{"answer": 42}')
    result = await make_agent().execute({"task": "Answer", "output_format": "json"})
    assert result.output == {"answer": 42}
    assert fake_platforms.openai.requests[0].json_schema == ANY_JSON_OBJECT


async def test_streamed_structured_output_streams_each_answer_and_takes_back_the_invalid_one(
    fake_platforms, make_agent
):
    fake_platforms.openai.reply("not json at all").reply('{"title": "Fix", "priority": 1}')
    events = await collect(make_agent(output_schema=SCHEMA), TASK)

    texts = [
        e.text if isinstance(e, OutputDelta) else "<reset>"
        for e in events
        if isinstance(e, OutputDelta | OutputReset)
    ]
    assert "".join(texts) == 'not json at all<reset>{"title": "Fix", "priority": 1}'
    assert len(texts) > 3  # word by word, not one block per answer
    reset = next(e for e in events if isinstance(e, OutputReset))
    assert "not valid JSON" in reset.reason
    assert isinstance(events[-1], ExecutionCompleted)
    assert events[-1].result.output == {"title": "Fix", "priority": 1}


async def test_a_structured_stream_cut_after_output_is_taken_back_and_retried(
    fake_platforms, make_agent, sleeps
):
    # Free text cut mid-stream cannot be retried (the client has it); a structured answer on a native stream
    # can: the client is told to drop it (output.reset), then the retry's answer streams.
    fake_platforms.openai.reply('{"title": "Fi', fail_after=1, error=platform_error("connection"))
    fake_platforms.openai.reply('{"title": "Fix", "priority": 1}')
    events = await collect(make_agent(output_schema=SCHEMA, max_retries=1), TASK)

    texts = [
        e.text if isinstance(e, OutputDelta) else "<reset>"
        for e in events
        if isinstance(e, OutputDelta | OutputReset)
    ]
    assert texts[1] == "<reset>" and "".join(texts[2:]) == '{"title": "Fix", "priority": 1}'
    reset = next(e for e in events if isinstance(e, OutputReset))
    assert "the stream from openai failed" in reset.reason
    result = events[-1].result
    assert isinstance(events[-1], ExecutionCompleted) and result.output == {"title": "Fix", "priority": 1}
    assert [a.status for a in result.attempts] == ["connection", "ok"]


async def test_a_structured_stream_cut_after_output_falls_back_after_a_reset(fake_platforms, make_agent):
    fake_platforms.openai.reply('{"title": "Fi', fail_after=1, error=platform_error("connection"))
    fake_platforms.anthropic.reply('{"title": "Fix", "priority": 2}')
    events = await collect(make_agent(output_schema=SCHEMA, max_retries=0), TASK)

    assert sum(isinstance(e, OutputReset) for e in events) == 1
    result = events[-1].result
    assert result.output == {"title": "Fix", "priority": 2} and result.platform_used == "anthropic"


async def test_a_stream_that_cannot_take_text_back_gets_only_the_validated_json(fake_platforms, make_agent):
    # OpenAI-compatible streams (RequestOptions from the facade) have no output.reset.
    fake_platforms.openai.reply("not json at all").reply('{"title": "Fix", "priority": 1}')
    events = await collect(make_agent(output_schema=SCHEMA), TASK, AgentContext(options=RequestOptions()))

    deltas = [e.text for e in events if isinstance(e, OutputDelta)]
    assert deltas == [json.dumps({"title": "Fix", "priority": 1})]
    assert not any(isinstance(e, OutputReset) for e in events)
    assert isinstance(events[-1], ExecutionCompleted)


async def test_tool_loop_runs_the_calculator_and_feeds_the_result_back(fake_platforms, make_agent):
    fake_platforms.openai.reply("", tool_calls=(tool_call("calculator", {"expression": "2 + 3 * 4"}, "c1"),))
    fake_platforms.openai.reply("The answer is 14.")
    events = await collect(make_agent(tools=("calculator",)), {"task": "What is 2 + 3 * 4?"})

    result = events[-1].result
    assert result.success and result.output == "The answer is 14."
    first, second = fake_platforms.openai.requests
    assert [t.name for t in first.tools] == ["calculator"]
    tool_message = second.messages[-1]
    assert (tool_message.role, tool_message.tool_call_id) == ("tool", "c1")
    assert json.loads(tool_message.content)["result"] == 14
    assert second.messages[-2].tool_calls[0].name == "calculator"
    [record] = result.metadata["tool_calls"]
    assert isinstance(record.pop("latency_ms"), int)
    assert record == {
        "id": "c1",
        "tool": "calculator",
        "arguments": {"expression": "2 + 3 * 4"},
        "result": {"expression": "2 + 3 * 4", "result": 14},
        "is_error": False,
    }
    call_events = [e for e in events if isinstance(e, ToolCallEvent | ToolResultEvent)]
    assert [type(e) for e in call_events] == [ToolCallEvent, ToolResultEvent]
    assert call_events[1].result["result"] == 14
    assert result.tokens_used == 30  # both turns


async def test_tool_errors_are_fed_back_to_the_model(fake_platforms, make_agent):
    fake_platforms.openai.reply("", tool_calls=(tool_call("calculator", {"expression": "1/0"}),))
    fake_platforms.openai.reply("Division by zero is undefined.")
    result = await make_agent(tools=("calculator",)).execute({"task": "1/0?"})
    assert result.success
    assert result.metadata["tool_calls"][0]["is_error"] is True
    assert "division by zero" in fake_platforms.openai.requests[1].messages[-1].content


async def test_tool_loop_stops_at_max_tool_calls_with_limit_exceeded(fake_platforms, make_agent):
    for i in range(5):
        fake_platforms.openai.reply("", tool_calls=(tool_call("current_time", {}, f"t{i}"),))
    result = await make_agent(tools=("current_time",), max_tool_calls=2).execute({"task": "loop"})
    assert result.success is False and result.error.code == "limit_exceeded"
    assert len(result.metadata["tool_calls"]) == 2
    assert len(fake_platforms.openai.requests) == 3


async def test_a_tool_not_on_the_allowlist_is_refused_and_never_executed(fake_platforms):
    executed = []
    tools = default_tool_registry()
    tools.register(
        Tool("delete_everything", "dangerous", {"type": "object"}, lambda: executed.append("boom") or "done")
    )
    fake_platforms.openai.reply("", tool_calls=(tool_call("delete_everything", {}, "d1"),))
    fake_platforms.openai.reply("I cannot do that.")
    from apps.agents.engine import AgentConfig

    agent = TaskAgent(
        AgentConfig(agent_id="a", name="A", preferred_platform="openai", tools=("calculator",)),
        fake_platforms.registry,
        tools=tools,
    )
    result = await agent.execute({"task": "wipe"})
    assert result.success and executed == []
    assert [t.name for t in fake_platforms.openai.requests[0].tools] == ["calculator"]
    record = result.metadata["tool_calls"][0]
    assert record["is_error"] is True and "not available" in record["result"]
    assert "not available" in fake_platforms.openai.requests[1].messages[-1].content


async def test_invalid_tool_arguments_are_an_error_result(fake_platforms, make_agent):
    fake_platforms.openai.reply("", tool_calls=(tool_call("calculator", {"expr": "1+1"}),))
    fake_platforms.openai.reply("ok")
    result = await make_agent(tools=("calculator",)).execute({"task": "x"})
    assert "invalid arguments" in result.metadata["tool_calls"][0]["result"]


async def test_no_tools_are_offered_without_an_allowlist(fake_platforms, make_agent):
    await make_agent().execute(TASK)
    assert fake_platforms.openai.requests[0].tools == ()


async def test_a_custom_registry_can_hold_async_tools(fake_platforms):
    async def lookup(city: str) -> dict:
        return {"city": city, "temp_c": 21}

    tools = ToolRegistry(
        [
            Tool(
                "weather",
                "weather",
                {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                lookup,
            )
        ]
    )
    fake_platforms.openai.reply("", tool_calls=(tool_call("weather", {"city": "Oslo"}),)).reply("21 C")
    from apps.agents.engine import AgentConfig

    agent = TaskAgent(
        AgentConfig(agent_id="a", name="A", tools=("weather",)), fake_platforms.registry, tools=tools
    )
    result = await agent.execute({"task": "Weather in Oslo?"})
    assert result.metadata["tool_calls"][0]["result"] == {"city": "Oslo", "temp_c": 21}
