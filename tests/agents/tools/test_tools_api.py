"""GET /api/v1/tools/ and the allowlist check on agent create/update: only registered tools, and MCP tools
only as `server:tool` of a registered, enabled server that allows that tool."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from apps.agents.models import Agent, McpServer
from tests.agents.api.conftest import client_for
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)


def by_name(response) -> dict:  # type: ignore[no-untyped-def]
    return {tool["name"]: tool for tool in response.json()["tools"]}


def test_the_tool_list_has_builtins_project_tools_and_mcp_tools_with_schemas(
    alice, stdio_server, project_tool_module, closed_port
):
    McpServer.objects.create(
        name="down", transport="http", url=f"http://127.0.0.1:{closed_port}/mcp", allowed_tools=["add"]
    )
    McpServer.objects.create(
        name="off", transport="stdio", command=["true"], allowed_tools=["x"], enabled=False
    )

    response = client_for(alice).get("/api/v1/tools/")

    assert response.status_code == 200
    tools = by_name(response)
    assert tools["calculator"]["kind"] == "builtin"
    lookup = tools["lookup_order"]
    assert lookup["kind"] == "project" and lookup["description"] == "Find an order by its number."
    assert lookup["parameters"]["properties"]["order_id"]["type"] == "integer"
    add = tools["demo:add"]
    assert (add["kind"], add["server"], add["available"], add["error"]) == ("mcp", "demo", True, "")
    assert add["parameters"]["required"] == ["a", "b"]
    assert "demo:secret" not in tools  # the server has it; staff did not allow it
    assert not any(name.startswith("off:") for name in tools)  # disabled
    down = tools["down:add"]
    assert down["available"] is False and down["parameters"] is None and "unavailable" in down["error"]


def test_the_tool_list_needs_a_login(client):  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/tools/").status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "nope",  # no such tool
        "nowhere:search",  # no such server
        "demo:secret",  # the server has it, staff did not allow it
        "off:x",  # a disabled server
        "http://evil.example/mcp:add",  # a user never supplies a URL
        "demo:",
    ],
)
def test_an_agent_naming_an_unregistered_tool_is_refused(alice, stdio_server, name):
    McpServer.objects.create(
        name="off", transport="stdio", command=["true"], allowed_tools=["x"], enabled=False
    )
    response = client_for(alice).post(
        "/api/v1/agents/", {"name": "A", "agent_id": "tooled", "tools": ["calculator", name]}, format="json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == ["tools"] and name in error["fields"]["tools"][0]
    assert not Agent.objects.filter(agent_id="tooled").exists()


def test_registered_tools_are_accepted_on_create_and_checked_on_update(alice, stdio_server):
    client = client_for(alice)
    created = client.post(
        "/api/v1/agents/",
        {"name": "A", "agent_id": "tooled", "tools": ["calculator", "demo:add", "demo:pid"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["tools"] == ["calculator", "demo:add", "demo:pid"]

    refused = client.patch("/api/v1/agents/tooled/", {"tools": ["demo:hang", "demo:secret"]}, format="json")
    assert refused.status_code == 400 and list(refused.json()["error"]["fields"]) == ["tools"]
    assert Agent.objects.get(agent_id="tooled").tools == ["calculator", "demo:add", "demo:pid"]


def test_an_agent_whose_server_was_removed_stays_editable(alice, stdio_server):
    agent = AgentFactory(owner=alice, tools=["demo:add"])
    stdio_server.delete()
    response = client_for(alice).patch(
        f"/api/v1/agents/{agent.agent_id}/", {"name": "Renamed"}, format="json"
    )
    assert response.status_code == 200


def test_mcp_server_rows_are_validated():
    with pytest.raises(ValidationError) as caught:
        McpServer(
            name="has:colon", transport="stdio", command=[], headers_from_env={"Authorization": "a b"}
        ).full_clean()
    assert {"name", "headers_from_env"} <= set(caught.value.message_dict)
    with pytest.raises(ValidationError, match="needs a command"):
        McpServer(name="ok", transport="stdio").full_clean()
    with pytest.raises(ValidationError, match="needs a URL"):
        McpServer(name="ok", transport="http").full_clean()


def test_the_openapi_schema_documents_the_tools_endpoint(client):  # type: ignore[no-untyped-def]
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/tools/"]["get"]
    assert "200" in operation["responses"]
    components = schema["components"]["schemas"]
    items = components["AgentInputRequest"]["properties"]["tools"]["items"]
    enum = components[items["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"]
    assert {"calculator", "current_time"} <= set(enum)
