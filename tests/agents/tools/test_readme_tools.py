"""README "Giving agents tools", run as written: the project tools module, the FastMCP server and its
registration, and the curl commands against a live server; then an agent on the fake OpenAI server calls
both kinds of tool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from apps.agents.engine.tools import tool_registry
from apps.agents.models import Agent, AgentExecution, McpServer
from apps.agents.services.execution_engine import execution_engine as engine
from apps.agents.services.tools import load_tool_modules
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory, UserFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()
SECTION = README.split("## Giving agents tools", 1)[1].split("\n## ", 1)[0]
PYTHON, BASH = (re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S) for lang in ("python", "bash"))


@pytest.fixture
def readme_tools(tmp_path, monkeypatch, settings, closed_port):  # type: ignore[no-untyped-def]
    """The README's module (as myteam/agent_tools.py) and server (docs_server.py) on disk, the module loaded
    through AGENT_TOOL_MODULES, and the README's registration code run in the working directory."""
    (tmp_path / "myteam").mkdir()
    (tmp_path / "myteam" / "__init__.py").write_text("")
    (tmp_path / "myteam" / "agent_tools.py").write_text(PYTHON[0])
    (tmp_path / "docs_server.py").write_text(PYTHON[1])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    settings.AGENT_TOOL_MODULES = ["myteam.agent_tools"]
    sys.modules.pop("myteam.agent_tools", None)
    load_tool_modules()
    # `python` as the README says, resolved to this interpreter (a bare `python` may not be on PATH here).
    exec(PYTHON[2].replace('"python"', repr(sys.executable)), {})
    # The README's HTTP server is a placeholder on the internet, which no test may reach (not even its DNS).
    McpServer.objects.filter(name="crm").update(url=f"http://127.0.0.1:{closed_port}/mcp")
    yield tmp_path
    for name in ("plan_price", "open_tickets"):
        tool_registry.unregister(name)
    sys.modules.pop("myteam.agent_tools", None)
    sys.modules.pop("myteam", None)


def test_the_readme_curl_commands_allowlist_the_readme_tools(readme_tools, live_server_url):  # type: ignore[no-untyped-def]
    alice = UserFactory(username="alice")
    AgentFactory(owner=alice, agent_id="my-agent")
    prelude = f"BASE={live_server_url}\nTOKEN={token_for(alice)}\n"
    for script in BASH:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", prelude + script],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert '{"error":' not in done.stdout, done.stdout
    # The last command set the MCP tool; GET /api/v1/tools/ listed every kind with schemas.
    assert Agent.objects.get(agent_id="my-agent").tools == ["docs:search_docs"]
    listed = done.stdout
    tools = {tool["name"]: tool for tool in json.JSONDecoder().raw_decode(listed)[0]["tools"]}
    assert tools["plan_price"]["parameters"]["required"] == ["plan"]
    assert tools["docs:search_docs"]["available"] is True
    assert tools["crm:find_customer"]["available"] is False


def test_an_agent_calls_the_readme_project_tool_and_mcp_tool(readme_tools, fake_registry, fake_openai):  # type: ignore[no-untyped-def]
    alice = UserFactory(username="alice")
    agent = AgentFactory(owner=alice, tools=["plan_price", "open_tickets", "docs:search_docs"])
    fake_openai.reply(
        Reply(
            text="",
            tool_calls=[
                {"id": "p", "name": "plan_price", "arguments": {"plan": "team", "seats": 3}},
                {"id": "t", "name": "open_tickets", "arguments": {"queue": "billing"}},
                {"id": "d", "name": "docs__search_docs", "arguments": {"query": "token"}},
            ],
        )
    )
    fake_openai.reply(text="The team plan for 3 seats is 87 USD a month.")

    result = async_to_sync(engine.execute_agent)(agent, {"task": "Price the team plan for 3"}, alice)

    assert result.success
    sent = {
        m["tool_call_id"]: m["content"]
        for m in fake_openai.requests[1].body["messages"]
        if m["role"] == "tool"
    }
    assert json.loads(sent["p"]) == {"plan": "team", "seats": 3, "monthly_usd": "87.00"}
    assert json.loads(sent["t"]) == 3
    assert json.loads(sent["d"]) == {"result": ["API tokens"]}
    calls = AgentExecution.objects.get(pk=result.execution_id).metadata["tool_calls"]
    assert [c["is_error"] for c in calls] == [False, False, False]
