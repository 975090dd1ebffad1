"""ConversationalAgent: history window, summary folding (never splitting a tool call from its result)."""

from __future__ import annotations

from apps.agents.engine import AgentContext, ConversationalAgent
from apps.agents.engine.conversational_agent import SUMMARY_SYSTEM_PROMPT, history_messages, window_start


def turns(count: int) -> list[dict]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i + 1}"} for i in range(count)
    ]


async def test_history_inside_the_window_is_sent_as_is_without_a_summary(fake_platforms, make_agent):
    agent = make_agent(ConversationalAgent, history_window=10, system_prompt="Be kind.")
    context = AgentContext(conversation_history=turns(4))
    result = await agent.execute({"task": "and now?"}, context)
    assert result.success and "summary" not in result.metadata
    (request,) = fake_platforms.openai.requests
    assert [m.content for m in request.messages] == [
        "message 1",
        "message 2",
        "message 3",
        "message 4",
        "and now?",
    ]
    assert request.system_prompt == "Be kind."
    assert request.temperature == 0.8


async def test_messages_past_the_window_are_folded_into_a_model_summary(fake_platforms, make_agent):
    fake_platforms.openai.reply("User asked about 1 and 2.").reply("Answer")
    agent = make_agent(ConversationalAgent, history_window=4, system_prompt="Be kind.")
    context = AgentContext(conversation_history=turns(6))

    result = await agent.execute({"task": "next"}, context)

    summary_request, answer_request = fake_platforms.openai.requests
    assert summary_request.system_prompt == SUMMARY_SYSTEM_PROMPT
    assert "user: message 1" in summary_request.messages[0].content
    assert "message 3" not in summary_request.messages[0].content
    assert summary_request.tools == ()
    assert [m.content for m in answer_request.messages] == [
        "message 3",
        "message 4",
        "message 5",
        "message 6",
        "next",
    ]
    assert answer_request.system_prompt.startswith("Be kind.")
    assert "User asked about 1 and 2." in answer_request.system_prompt
    assert result.metadata["summary"] == {"text": "User asked about 1 and 2.", "upto": 2}
    # The summary call is paid for too.
    assert result.tokens_used == 30 and len(result.attempts) == 2


async def test_a_stored_summary_is_reused_and_extended(fake_platforms, make_agent):
    fake_platforms.openai.reply("Old facts, plus 1 and 2.").reply("Answer")
    agent = make_agent(ConversationalAgent, history_window=4)
    context = AgentContext(conversation_history=turns(6), conversation_summary="Old facts.")
    result = await agent.execute({"task": "next"}, context)
    assert "Previous summary:\nOld facts." in fake_platforms.openai.requests[0].messages[0].content
    assert result.metadata["summary"]["text"] == "Old facts, plus 1 and 2."


async def test_a_summary_within_the_window_costs_no_extra_call(fake_platforms, make_agent):
    agent = make_agent(ConversationalAgent, history_window=4)
    await agent.execute({"task": "q"}, AgentContext(conversation_history=turns(2), conversation_summary="S."))
    (request,) = fake_platforms.openai.requests
    assert request.system_prompt.endswith("Summary of the earlier conversation:\nS.")


def test_the_window_never_starts_between_a_tool_call_and_its_result():
    history = history_messages(
        [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "what time is it?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "t", "name": "current_time", "arguments": {}}],
            },
            {"role": "tool", "content": "{}", "tool_call_id": "t", "name": "current_time"},
            {"role": "assistant", "content": "noon"},
        ]
    )
    # A window of 2 would start on the tool result; it widens back to the user turn that asked.
    assert window_start(history, 2) == 2
    assert window_start(history, 3) == 2
    assert window_start(history, 6) == 0


async def test_a_failed_summary_degrades_to_the_window(fake_platforms, make_agent):
    fake_platforms.openai.fail("bad_request", message="too long").reply("Answer")
    agent = make_agent(ConversationalAgent, history_window=2)
    result = await agent.execute({"task": "next"}, AgentContext(conversation_history=turns(4)))
    assert result.success and result.output == "Answer"
    assert "summary" not in result.metadata and "too long" in result.metadata["summary_error"]


async def test_conversational_tool_calls_stay_in_the_transcript(fake_platforms, make_agent):
    from tests.fakes.platform import tool_call

    fake_platforms.openai.reply("", tool_calls=(tool_call("calculator", {"expression": "6*7"}, "c"),)).reply(
        "42"
    )
    agent = make_agent(ConversationalAgent, tools=("calculator",))
    result = await agent.execute({"task": "6*7?"})
    assert result.output == "42"
    assert [m.role for m in agent.last_run.transcript] == ["user", "assistant", "tool", "assistant"]
