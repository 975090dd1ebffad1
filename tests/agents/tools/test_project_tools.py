"""Project tools: Python functions registered by the deploying team (`@agent_tool`, loaded through
AGENT_TOOL_MODULES), run through the engine on the fake OpenAI server; and the function_tool rules."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from apps.agents.engine.function_tools import agent_tool, function_tool
from apps.agents.engine.tools import ToolRegistry
from apps.agents.models import AgentExecution
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def tool_call(call_id: str, name: str, arguments: dict) -> Reply:
    return Reply(text="", tool_calls=[{"id": call_id, "name": name, "arguments": arguments}])


def fed_back(request_body: dict, call_id: str) -> str:
    return next(m["content"] for m in request_body["messages"] if m.get("tool_call_id") == call_id)


async def test_a_project_tool_from_a_settings_module_runs_in_an_agent(
    project_tool_module, fake_registry, fake_openai, alice
):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["lookup_order", "order_note"])
    fake_openai.reply(
        Reply(
            text="",
            tool_calls=[
                {"id": "c1", "name": "lookup_order", "arguments": {"order_id": 7, "include_items": True}},
                {"id": "c2", "name": "order_note", "arguments": {"order_id": 7, "note": "fragile"}},
            ],
        )
    )
    fake_openai.reply(text="Order 7 has shipped.")

    result = await engine.execute_agent(agent, {"task": "Where is order 7?"}, alice)

    assert result.success and result.output == "Order 7 has shipped."
    first, second = (r.body for r in fake_openai.requests)
    offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert offered["lookup_order"]["description"] == "Find an order by its number."
    assert offered["lookup_order"]["parameters"]["properties"]["order_id"]["type"] == "integer"
    assert offered["lookup_order"]["parameters"]["required"] == ["order_id"]
    assert offered["order_note"]["description"] == "Add a note to an order."
    assert json.loads(fed_back(second, "c1")) == {"id": 7, "status": "shipped", "items": 3}
    assert fed_back(second, "c2") == "noted on 7: fragile"
    execution = await AgentExecution.objects.aget(pk=result.execution_id)
    assert [c["tool"] for c in execution.metadata["tool_calls"]] == ["lookup_order", "order_note"]


async def test_slow_failing_and_oversized_project_tools_are_error_results(
    project_tool_module, fake_registry, fake_openai, alice
):
    agent = await sync_to_async(AgentFactory)(
        owner=alice, tools=["lookup_order", "slow_report", "big_export"]
    )
    fake_openai.reply(
        Reply(
            text="",
            tool_calls=[
                {"id": "slow", "name": "slow_report", "arguments": {"days": 3}},
                {"id": "missing", "name": "lookup_order", "arguments": {"order_id": 99}},
                {"id": "bad", "name": "lookup_order", "arguments": {"order_id": "seven"}},
                {"id": "big", "name": "big_export", "arguments": {}},
            ],
        )
    )
    fake_openai.reply(text="Some tools failed.")

    result = await engine.execute_agent(agent, {"task": "Report"}, alice)

    assert result.success and result.output == "Some tools failed."
    second = fake_openai.requests[1].body
    assert json.loads(fed_back(second, "slow")) == {"error": "slow_report did not answer within 0.2 s"}
    assert json.loads(fed_back(second, "missing")) == {"error": "no order 99"}
    assert "order_id" in json.loads(fed_back(second, "bad"))["error"]
    big = fed_back(second, "big")
    assert len(big) <= 100 and "truncated: the result had 10000 characters" in big
    execution = await AgentExecution.objects.aget(pk=result.execution_id)
    assert [c["is_error"] for c in execution.metadata["tool_calls"]] == [True, True, True, False]


async def test_a_blocking_sync_tool_does_not_block_the_event_loop():
    import asyncio
    import time

    registry = ToolRegistry()

    @agent_tool(registry=registry)
    def sleepy(seconds: float) -> str:
        """Blocks its thread."""
        time.sleep(seconds)
        return "awake"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    outcome = await registry.invoke("sleepy", {"seconds": 0.3}, allowed=["sleepy"])
    task.cancel()
    assert outcome.result == "awake"
    assert ticks >= 5  # the loop kept running while the function slept (inline, it would be 0)


def test_function_tool_rules():
    def no_doc(x: int) -> int:
        return x

    def untyped(x):  # type: ignore[no-untyped-def]
        """Untyped."""

    def variadic(*args: int) -> None:
        """Variadic."""

    with pytest.raises(ValueError, match="docstring"):
        function_tool(no_doc)
    with pytest.raises(ValueError, match="needs a type hint"):
        function_tool(untyped)
    with pytest.raises(ValueError, match=r"\*args"):
        function_tool(variadic)
    with pytest.raises(ValueError, match="must match"):
        function_tool(no_doc, name="has:colon", description="d")


def test_a_second_function_under_a_taken_name_is_refused():
    registry = ToolRegistry()

    @agent_tool(registry=registry, name="lookup")
    def first(x: int) -> int:
        """First."""
        return x

    with pytest.raises(ValueError, match="already registered"):

        @agent_tool(registry=registry, name="lookup")
        def second(x: int) -> int:
            """Second."""
            return x


async def test_a_timeout_error_raised_by_the_tool_is_not_reported_as_its_own_timeout():
    registry = ToolRegistry()

    @agent_tool(registry=registry, timeout=5)
    async def flaky_fetch(url_id: int) -> str:
        """Fetches something; its HTTP client timed out."""
        raise TimeoutError("read timed out")

    outcome = await registry.invoke("flaky_fetch", {"url_id": 1}, allowed=["flaky_fetch"])
    assert outcome.is_error and outcome.result == "flaky_fetch failed: TimeoutError: read timed out"
