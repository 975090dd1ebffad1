"""Fixtures for the tool tests: the test MCP server over stdio (a subprocess) and over streamable HTTP
(uvicorn on 127.0.0.1, a random port), registered as McpServer rows; MCP sessions closed after each test."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from apps.agents.engine.tools import tool_registry
from apps.agents.models import McpServer
from apps.agents.services.tools import load_tool_modules, mcp_hub
from tests.agents.tools.mcp_server import build_server

ALLOWED = ["add", "pid", "fail", "hang", "auth_header", "env"]  # `secret` is left out on purpose
PROJECT_MODULE = "tests.agents.tools.project_tools"
# Not imported here: importing the module registers its tools, which only the fixture below may do.
PROJECT_TOOLS = ("lookup_order", "order_note", "slow_report", "big_export")


@pytest.fixture(autouse=True)
def _close_mcp_sessions() -> Iterator[None]:
    """Sessions are per process and outlive a run by design; a test's servers must not outlive the test."""
    yield
    mcp_hub.close()


@pytest.fixture
def stdio_server(db) -> McpServer:  # type: ignore[no-untyped-def]
    return McpServer.objects.create(
        name="demo",
        transport="stdio",
        command=[sys.executable, "-m", "tests.agents.tools.mcp_server"],
        env_from_env={"DEMO_API_KEY": "PLATFORM_DEMO_KEY"},
        allowed_tools=ALLOWED,
        timeout_seconds=20,
    )


@pytest.fixture
def http_mcp_url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_server().streamable_http_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the MCP test server did not start"
    yield f"http://127.0.0.1:{port}/mcp"
    mcp_hub.close()  # the client's session first, so the server is not left holding its stream
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def http_server(db, http_mcp_url) -> McpServer:  # type: ignore[no-untyped-def]
    return McpServer.objects.create(
        name="web",
        transport="http",
        url=http_mcp_url,
        headers_from_env={"Authorization": "WEB_MCP_AUTH"},
        allowed_tools=ALLOWED,
        timeout_seconds=20,
    )


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def project_tool_module(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The project tools, loaded through AGENT_TOOL_MODULES as at start-up, and removed afterwards (the
    registry is process-wide, and other tests compare the OpenAPI schema's tool names)."""
    sys.modules.pop(PROJECT_MODULE, None)
    settings.AGENT_TOOL_MODULES = [PROJECT_MODULE]
    load_tool_modules()
    yield PROJECT_MODULE
    for name in PROJECT_TOOLS:
        tool_registry.unregister(name)
