"""MCP tools driven through real runs: an agent on the fake OpenAI server (real SDK, real HTTP) asks for a
tool of the FastMCP test server, over stdio (a subprocess) or streamable HTTP (127.0.0.1), and the result
comes back into the conversation. Also: sessions reused across runs, a server that dies mid-call, a server
that is down."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from asgiref.sync import sync_to_async

from apps.agents.models import AgentExecution, McpServer
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test (PostgreSQL)."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def tool_call(call_id: str, name: str, arguments: dict) -> Reply:
    return Reply(text="", tool_calls=[{"id": call_id, "name": name, "arguments": arguments}])


def tool_message(body: dict, call_id: str) -> dict:
    return next(m for m in body["messages"] if m.get("role") == "tool" and m.get("tool_call_id") == call_id)


async def run(agent, alice, task: str = "Use the tool"):  # type: ignore[no-untyped-def]
    result = await engine.execute_agent(agent, {"task": task}, alice)
    return result, await AgentExecution.objects.aget(pk=result.execution_id)


@pytest.mark.parametrize("server_fixture", ["stdio_server", "http_server"])
async def test_an_mcp_tool_result_reaches_the_model(
    request, server_fixture, fake_registry, fake_openai, alice
):
    server: McpServer = await sync_to_async(request.getfixturevalue)(server_fixture)
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=[f"{server.name}:add"])
    wire = f"{server.name}__add"
    fake_openai.reply(tool_call("c1", wire, {"a": 2, "b": 40}))
    fake_openai.reply(text="2 + 40 is 42.")

    result, execution = await run(agent, alice, "What is 2 + 40?")

    assert result.success and result.output == "2 + 40 is 42."
    first, second = (r.body for r in fake_openai.requests)
    # Only the allowlisted tool is offered, with the schema the server declared.
    [offered] = first["tools"]
    assert offered["function"]["name"] == wire
    assert offered["function"]["description"] == "Add two integers."
    assert offered["function"]["parameters"]["properties"].keys() == {"a", "b"}
    # The server's answer went back to the model as the tool message.
    fed_back = tool_message(second, "c1")
    assert json.loads(fed_back["content"]) == {"result": 42}
    [record] = execution.metadata["tool_calls"]
    assert record["tool"] == wire and record["arguments"] == {"a": 2, "b": 40}
    assert record["result"] == {"result": 42} and record["is_error"] is False


async def test_a_stdio_session_is_reused_across_runs(stdio_server, fake_registry, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["demo:pid"])
    pids = []
    for i in range(2):
        fake_openai.reply(tool_call(f"p{i}", "demo__pid", {}))
        fake_openai.reply(text="done")
        _, execution = await run(agent, alice)
        pids.append(execution.metadata["tool_calls"][0]["result"]["result"])
    assert pids[0] == pids[1] and pids[0] != os.getpid()


async def test_a_server_killed_mid_call_is_an_error_result_and_the_run_completes(
    stdio_server, fake_registry, fake_openai, alice, tmp_path
):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["demo:hang", "demo:add"])
    marker = tmp_path / "pid"
    fake_openai.reply(tool_call("h1", "demo__hang", {"marker": str(marker)}))
    fake_openai.reply(tool_call("a1", "demo__add", {"a": 1, "b": 1}))  # after the crash: a new session
    fake_openai.reply(text="The server went away, but I recovered.")

    running = asyncio.create_task(run(agent, alice))
    for _ in range(400):  # the server writes its pid when the call has reached it
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.025)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    result, execution = await asyncio.wait_for(running, 30)

    assert result.success and result.output == "The server went away, but I recovered."
    second, third = (r.body for r in fake_openai.requests[1:])
    crashed = tool_message(second, "h1")["content"]
    assert "closed the connection" in crashed and "demo" in crashed
    assert json.loads(tool_message(third, "a1")["content"]) == {"result": 2}
    hang, add = execution.metadata["tool_calls"]
    assert hang["is_error"] is True and add["is_error"] is False


async def test_a_server_that_is_down_gives_the_model_an_error(closed_port, fake_registry, fake_openai, alice):
    await McpServer.objects.acreate(
        name="down", transport="http", url=f"http://127.0.0.1:{closed_port}/mcp", allowed_tools=["add"]
    )
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["down:add"])
    fake_openai.reply(tool_call("d1", "down__add", {"a": 1, "b": 2}))
    fake_openai.reply(text="The tool is unavailable right now.")

    result, execution = await run(agent, alice)

    assert result.success and result.output == "The tool is unavailable right now."
    fed_back = tool_message(fake_openai.requests[1].body, "d1")["content"]
    assert "'down' is unavailable" in fed_back and "ConnectError" in fed_back
    assert execution.metadata["tool_calls"][0]["is_error"] is True


async def test_a_tool_error_and_a_tool_outside_the_server_allowlist(
    stdio_server, fake_registry, fake_openai, alice
):
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["demo:fail"])
    fake_openai.reply(tool_call("f1", "demo__fail", {"reason": "disk full"}))
    fake_openai.reply(tool_call("s1", "demo__secret", {}))  # the server has it; staff did not allow it
    fake_openai.reply(text="ok")

    result, _ = await run(agent, alice)

    assert result.success
    assert [t["function"]["name"] for t in fake_openai.requests[0].body["tools"]] == ["demo__fail"]
    assert "disk full" in tool_message(fake_openai.requests[1].body, "f1")["content"]
    assert "not available" in tool_message(fake_openai.requests[2].body, "s1")["content"]


async def test_http_headers_come_from_the_environment(
    http_server, fake_registry, fake_openai, alice, monkeypatch
):
    monkeypatch.setenv("WEB_MCP_AUTH", "Bearer from-env")
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["web:auth_header"])
    fake_openai.reply(tool_call("h1", "web__auth_header", {}))
    fake_openai.reply(text="ok")

    await run(agent, alice)

    assert json.loads(tool_message(fake_openai.requests[1].body, "h1")["content"]) == {
        "result": "Bearer from-env"
    }


async def test_a_stdio_server_gets_only_the_variables_staff_named(
    stdio_server, fake_registry, fake_openai, alice, monkeypatch
):
    monkeypatch.setenv("PLATFORM_DEMO_KEY", "demo-key-from-env")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-reach-tool-servers")
    agent = await sync_to_async(AgentFactory)(owner=alice, tools=["demo:env"])
    fake_openai.reply(
        Reply(
            text="",
            tool_calls=[
                {"id": "k", "name": "demo__env", "arguments": {"name": "DEMO_API_KEY"}},
                {"id": "o", "name": "demo__env", "arguments": {"name": "OPENAI_API_KEY"}},
            ],
        )
    )
    fake_openai.reply(text="ok")

    await run(agent, alice)

    second = fake_openai.requests[1].body
    assert json.loads(tool_message(second, "k")["content"]) == {"result": "demo-key-from-env"}
    assert json.loads(tool_message(second, "o")["content"]) == {"result": ""}
