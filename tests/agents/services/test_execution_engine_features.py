"""Structured output, tools and conversations through the ExecutionEngine, over HTTP to the fake OpenAI server
(real SDK, real DB)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from apps.agents.engine.conversational_agent import SUMMARY_SYSTEM_PROMPT
from apps.agents.engine.events import ExecutionCompleted, ToolCallEvent, ToolResultEvent
from apps.agents.models import AgentExecution, Conversation, ExecutionStatus, Message
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory, ConversationFactory, MessageFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test, or PostgreSQL
    refuses to drop the test database at the end ("being accessed by other users")."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "priority": {"type": "integer", "minimum": 1}},
    "required": ["title", "priority"],
}


def calls(*specs: tuple[str, str, dict]) -> list[dict]:
    return [{"id": call_id, "name": name, "arguments": arguments} for call_id, name, arguments in specs]


async def row(result) -> AgentExecution:
    return await AgentExecution.objects.aget(pk=result.execution_id)


# ---------------------------------------------------------------------------------------- structured output
async def test_invalid_json_is_re_asked_then_valid(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, output_schema=SCHEMA)
    fake_openai.reply(text="Here you go: title is Fix login")
    fake_openai.reply(text='{"title": "Fix login", "priority": 2}')

    result = await engine.execute_agent(agent, {"task": "File a ticket"}, alice)

    assert result.success and result.output == {"title": "Fix login", "priority": 2}
    execution = await row(result)
    assert execution.output == {"title": "Fix login", "priority": 2}
    assert execution.metadata["reasks"] == 1
    first, second = (r.body for r in fake_openai.requests)
    assert first["response_format"]["json_schema"]["schema"] == SCHEMA
    assert second["messages"][-2] == {"role": "assistant", "content": "Here you go: title is Fix login"}
    assert "not valid JSON" in second["messages"][-1]["content"]
    assert execution.input_tokens == 22  # both calls are paid for


async def test_a_schema_never_satisfied_fails_with_invalid_output(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, output_schema=SCHEMA)
    for _ in range(3):
        fake_openai.reply(text='{"title": "Fix login"}')
    result = await engine.execute_agent(agent, {"task": "File a ticket"}, alice)
    assert result.success is False and result.error.code == "invalid_output"
    execution = await row(result)
    assert (execution.status, execution.error_code) == (ExecutionStatus.FAILED, "invalid_output")
    assert "'priority' is a required property" in execution.error_message
    assert len(fake_openai.requests) == 3


# ---------------------------------------------------------------------------------------- tools
async def test_tool_calls_are_executed_fed_back_recorded_and_streamed(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["calculator"])
    fake_openai.reply(Reply(text="", tool_calls=calls(("call_1", "calculator", {"expression": "6 * 7"}))))
    fake_openai.reply(text="It is 42.")

    events = [e async for e in engine.execute_streaming(agent, {"task": "6 times 7?"}, alice)]

    tool_events = [e for e in events if isinstance(e, ToolCallEvent | ToolResultEvent)]
    assert [e.data() for e in tool_events] == [
        {"id": "call_1", "tool": "calculator", "arguments": {"expression": "6 * 7"}},
        {
            "id": "call_1",
            "tool": "calculator",
            "result": {"expression": "6 * 7", "result": 42},
            "is_error": False,
        },
    ]
    assert isinstance(events[-1], ExecutionCompleted) and events[-1].result.output == "It is 42."
    first, second = (r.body for r in fake_openai.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": json.dumps({"expression": "6 * 7", "result": 42}),
    }
    execution = await AgentExecution.objects.aget(pk=events[0].execution_id)
    assert execution.metadata["tool_calls"][0]["result"]["result"] == 42


async def test_the_tool_loop_stops_at_its_limit(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["current_time"], max_tool_calls=2)
    for i in range(4):
        fake_openai.reply(Reply(text="", tool_calls=calls((f"c{i}", "current_time", {}))))
    result = await engine.execute_agent(agent, {"task": "what time is it, again and again?"}, alice)
    assert result.success is False and result.error.code == "limit_exceeded"
    execution = await row(result)
    assert execution.error_code == "limit_exceeded"
    assert len(execution.metadata["tool_calls"]) == 2
    assert len(fake_openai.requests) == 3


async def test_a_tool_not_on_the_allowlist_is_refused(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["calculator"])
    fake_openai.reply(Reply(text="", tool_calls=calls(("c1", "current_time", {"timezone": "UTC"}))))
    fake_openai.reply(text="I cannot tell the time.")
    result = await engine.execute_agent(agent, {"task": "time?"}, alice)
    assert result.success
    record = (await row(result)).metadata["tool_calls"][0]
    assert record["is_error"] is True and "not available" in record["result"]
    fed_back = fake_openai.requests[1].body["messages"][-1]
    assert fed_back["role"] == "tool" and "not available" in fed_back["content"]


# ---------------------------------------------------------------------------------------- conversations
@pytest.fixture
def chat(alice):
    """A conversational agent (window 4) and alice's conversation with 6 messages."""
    agent = AgentFactory(owner=alice, agent_type="conversational", history_window=4, system_prompt="Be kind.")
    conversation = ConversationFactory(owner=alice, agent=agent, title="")
    for position in range(1, 7):
        MessageFactory(
            conversation=conversation,
            position=position,
            role="user" if position % 2 else "assistant",
            content=f"message {position}",
        )
    return agent, conversation


async def test_summary_is_created_past_the_window_and_reused_on_the_next_run(
    fake_registry, fake_openai, alice, chat
):
    agent, conversation = chat
    context = {"conversation_id": str(conversation.pk)}
    fake_openai.reply(text="S1: talked about 1 and 2.")
    fake_openai.reply(text="Answer one")

    first = await engine.execute_agent(agent, {"task": "question one"}, alice, context)

    assert first.success and first.output == "Answer one"
    summary_request, answer_request = (r.body for r in fake_openai.requests)
    assert summary_request["messages"][0] == {"role": "system", "content": SUMMARY_SYSTEM_PROMPT}
    assert "user: message 1" in summary_request["messages"][1]["content"]
    assert "message 3" not in summary_request["messages"][1]["content"]
    assert [m["content"] for m in answer_request["messages"][1:]] == [
        "message 3",
        "message 4",
        "message 5",
        "message 6",
        "question one",
    ]
    assert "S1: talked about 1 and 2." in answer_request["messages"][0]["content"]
    stored = await Conversation.objects.aget(pk=conversation.pk)
    assert (stored.summary, stored.summary_upto, stored.title) == (
        "S1: talked about 1 and 2.",
        2,
        "question one",
    )
    messages = [m async for m in Message.objects.filter(conversation=conversation).order_by("position")]
    assert [(m.position, m.role, m.content) for m in messages[-2:]] == [
        (7, "user", "question one"),
        (8, "assistant", "Answer one"),
    ]
    assert messages[-1].execution_id is not None and str(messages[-1].execution_id) == first.execution_id

    # Next run: the stored summary is the starting point; messages 1-2 are never sent again.
    fake_openai.reset()
    fake_openai.reply(text="S2: 1 to 4.")
    fake_openai.reply(text="Answer two")
    second = await engine.execute_agent(agent, {"task": "question two"}, alice, context)
    assert second.success
    summary_request, answer_request = (r.body for r in fake_openai.requests)
    assert "Previous summary:\nS1: talked about 1 and 2." in summary_request["messages"][1]["content"]
    assert "message 1" not in json.dumps(summary_request) and "message 1" not in json.dumps(answer_request)
    stored = await Conversation.objects.aget(pk=conversation.pk)
    assert (stored.summary, stored.summary_upto) == ("S2: 1 to 4.", 4)


async def test_a_stored_summary_within_the_window_costs_no_summary_call(
    fake_registry, fake_openai, alice, chat
):
    agent, conversation = chat
    await Conversation.objects.filter(pk=conversation.pk).aupdate(summary="Earlier: 1 and 2.", summary_upto=2)
    result = await engine.execute_agent(
        agent, {"task": "go on"}, alice, {"conversation_id": str(conversation.pk)}
    )
    assert result.success
    (request,) = (r.body for r in fake_openai.requests)
    assert request["messages"][0]["content"].endswith(
        "Summary of the earlier conversation:\nEarlier: 1 and 2."
    )
    assert [m["content"] for m in request["messages"][1:]] == [
        "message 3",
        "message 4",
        "message 5",
        "message 6",
        "go on",
    ]


async def test_a_failed_run_appends_nothing_to_the_conversation(fake_registry, fake_openai, alice, chat):
    from tests.fakes.server import Fault

    agent, conversation = chat
    await Conversation.objects.filter(pk=conversation.pk).aupdate(summary_upto=2, summary="S")
    fake_openai.fail(Fault("status", status=400))
    result = await engine.execute_agent(
        agent, {"task": "x"}, alice, {"conversation_id": str(conversation.pk)}
    )
    assert result.success is False
    assert await Message.objects.filter(conversation=conversation).acount() == 6
    assert (await row(result)).conversation_id == conversation.pk


async def test_context_history_without_a_stored_conversation(fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, agent_type="conversational")
    history = [{"role": "user", "content": "I am Ada."}, {"role": "assistant", "content": "Hello Ada."}]
    result = await engine.execute_agent(
        agent, {"task": "Who am I?"}, alice, {"conversation_history": history}
    )
    assert result.success
    assert fake_openai.requests[0].body["messages"][1:] == [
        *history,
        {"role": "user", "content": "Who am I?"},
    ]
    assert fake_openai.requests[0].body["temperature"] == 0.8
