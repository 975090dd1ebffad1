"""RequestOptions (what an OpenAI-compatible request asks of a run) inside the engine, on the fake platform."""

from __future__ import annotations

from apps.agents.engine import AgentContext, ConversationalAgent, TaskAgent
from apps.agents.engine.request_options import RequestOptions
from apps.platforms.base import ChatMessage, Sampling, ToolChoice, ToolDefinition
from tests.fakes.platform import tool_call

WEATHER = ToolDefinition(
    "get_weather", "weather", {"type": "object", "properties": {"city": {"type": "string"}}}
)


def turns(count: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(count)]


async def test_sampling_goes_to_the_answer_not_to_the_agents_own_summary(fake_platforms, make_agent):
    fake_platforms.openai.supported_options = frozenset({"stop"})
    fake_platforms.openai.reply("Summary.").reply("Answer")
    agent = make_agent(ConversationalAgent, history_window=4)
    options = RequestOptions(sampling=Sampling(stop=("END",)))
    context = AgentContext(conversation_history=turns(6), options=options)
    result = await agent.execute({"task": "next"}, context)
    assert result.success
    summary, answer = fake_platforms.openai.requests
    assert summary.sampling == Sampling() and answer.sampling.stop == ("END",)


async def test_a_platform_without_an_option_is_skipped(fake_platforms, make_agent):
    fake_platforms.anthropic.supported_options = frozenset({"seed"})
    fake_platforms.anthropic.reply("From the fallback.")
    agent = make_agent(TaskAgent)
    context = AgentContext(options=RequestOptions(sampling=Sampling(seed=3)))
    result = await agent.execute({"task": "hi"}, context)
    assert result.output == "From the fallback." and not fake_platforms.openai.requests
    assert [(a.platform, a.status) for a in result.attempts][:2] == [
        ("openai", "unsupported"),
        ("anthropic", "ok"),
    ]


async def test_a_client_tool_call_ends_the_run_and_the_agents_own_tools_still_run(fake_platforms, make_agent):
    fake_platforms.openai.supported_options = frozenset({"tool_choice"})
    fake_platforms.openai.reply("", tool_calls=[tool_call("calculator", {"expression": "2+2"}, "c1")])
    fake_platforms.openai.reply("", tool_calls=[tool_call("get_weather", {"city": "Oslo"}, "c2")])
    agent = make_agent(TaskAgent, tools=("calculator",))
    options = RequestOptions(client_tools=(WEATHER,), tool_choice=ToolChoice("required"))
    result = await agent.execute({"task": "2+2, then the weather"}, AgentContext(options=options))
    assert result.success and result.metadata["finish_reason"] == "tool_calls"
    assert result.metadata["client_tool_calls"] == [
        {"id": "c2", "name": "get_weather", "arguments": {"city": "Oslo"}}
    ]
    assert [call["tool"] for call in result.metadata["tool_calls"]] == ["calculator"]  # ran on the server
    first, second = fake_platforms.openai.requests
    assert [tool.name for tool in first.tools] == ["calculator", "get_weather"]
    assert first.tool_choice == ToolChoice("required")
    assert second.messages[-1].role == "tool" and second.messages[-1].name == "calculator"


async def test_the_clients_messages_follow_the_history_and_a_tool_result_continues(
    fake_platforms, make_agent
):
    fake_platforms.openai.reply("Sunny.")
    call = tool_call("get_weather", {"city": "Oslo"}, "c2")
    messages = (
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="sunny", tool_call_id="c2", name="get_weather"),
    )
    context = AgentContext(
        conversation_history=[{"role": "user", "content": "Weather?"}],
        options=RequestOptions(client_tools=(WEATHER,), messages=messages),
    )
    result = await make_agent(TaskAgent).execute({"task": "Weather?"}, context)
    assert result.output == "Sunny."
    (request,) = fake_platforms.openai.requests
    assert [m.role for m in request.messages] == ["user", "assistant", "tool"]
