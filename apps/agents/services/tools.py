"""The tools an agent may call, built from what the deploying team registered (the engine knows no Django).

- Built-in and project tools: the process-wide `tool_registry`; project tools come from the modules named in
  settings.AGENT_TOOL_MODULES (imported at startup, apps.py) and from any module using `@agent_tool`.
- MCP tools: the `McpServer` rows staff registered. An allowlist names them `server:tool`; only tools the
  row's `allowed_tools` lists are accepted or offered. Header values come from environment variables named
  on the row, so no secret sits in the database, and no user input ever becomes a command or a URL.

`unknown_tool_names` guards agent create/update; `tools_for_run` builds a run's registry; `tool_catalog`
answers GET /api/v1/tools/. MCP sessions live on the process's run loop (`mcp_hub`), shared by every run.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from apps.agents.engine.mcp_tools import McpHub, McpServerConfig, McpToolInfo, McpUnavailable, mcp_tools
from apps.agents.engine.tools import BUILTIN_TOOLS, ToolRegistry, tool_registry
from apps.agents.models import McpServer
from apps.agents.services.background import runner

logger = logging.getLogger(__name__)

#: The process's MCP sessions, on the long-lived run loop (apps/agents/services/background.py).
mcp_hub = McpHub(home_loop=runner.loop)

_BUILTIN_NAMES = frozenset(tool.name for tool in BUILTIN_TOOLS)


def load_tool_modules(modules: Iterable[str] | None = None) -> None:
    """Import the modules whose `@agent_tool` functions register project tools. A module that fails to
    import stops the start-up: a deployment missing its tools should not look healthy."""
    for module in settings.AGENT_TOOL_MODULES if modules is None else modules:
        importlib.import_module(module)


def split_mcp_name(name: str) -> tuple[str, str] | None:
    """('docs', 'search') for 'docs:search'; None for a name without a server."""
    server, sep, tool = name.partition(":")
    return (server, tool) if sep and server and tool else None


def server_config(row: McpServer) -> McpServerConfig:
    return McpServerConfig(
        name=row.name,
        transport=row.transport,  # type: ignore[arg-type]
        command=tuple(row.command or ()),
        url=row.url,
        headers=_from_environment(row.name, row.headers_from_env, "header"),
        env=_from_environment(row.name, row.env_from_env, "variable"),
        allowed_tools=tuple(row.allowed_tools or ()),
        timeout=float(row.timeout_seconds),
    )


def _from_environment(server: str, mapping: dict[str, str] | None, what: str) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs whose values are read from this process's environment variables."""
    pairs = []
    for name, variable in (mapping or {}).items():
        value = os.environ.get(variable)
        if value is None:
            # Said by name only, never a value: the server will likely refuse, and the model hears that.
            logger.warning(
                "MCP server %s: environment variable %s (%s %s) is not set", server, variable, what, name
            )
            continue
        pairs.append((name, value))
    return tuple(pairs)


# --------------------------------------------------------------------------- validation (sync)
def unknown_tool_names(names: Sequence[str]) -> list[str]:
    """The names of `names` that no agent may allowlist: not a built-in or project tool, and not an allowed
    tool of an enabled MCP server. No server is contacted (agent edits must not depend on one being up)."""
    mcp_names = {name: split for name in names if (split := split_mcp_name(name)) is not None}
    servers = {}
    if mcp_names:
        wanted = {server for server, _ in mcp_names.values()}
        servers = {
            row.name: set(row.allowed_tools or ())
            for row in McpServer.objects.filter(name__in=wanted, enabled=True).only("name", "allowed_tools")
        }
    unknown = []
    for name in names:
        if name in mcp_names:
            server, tool = mcp_names[name]
            if tool not in servers.get(server, ()):
                unknown.append(name)
        elif name not in tool_registry:
            unknown.append(name)
    return unknown


def allowlist_names() -> list[str]:
    """Every name an allowlist may contain, without contacting any server."""
    names = tool_registry.names()
    try:
        rows = McpServer.objects.filter(enabled=True).order_by("name").values_list("name", "allowed_tools")
        names += [f"{server}:{tool}" for server, tools in rows for tool in tools or ()]
    except (RuntimeError, DatabaseError):
        # The schema is also generated where the database may not be used (pytest collection) or is not
        # migrated yet (`manage.py spectacular` on a fresh checkout): the registered functions still are.
        pass
    return names


# --------------------------------------------------------------------------- a run's tools (async)
async def tools_for_run(allowlist: Sequence[str]) -> ToolRegistry:
    """The registry an agent with `allowlist` runs with: the process-wide one when it names no MCP tool;
    otherwise those tools plus the MCP tools, listed (and cached) on the servers' sessions."""
    by_server: dict[str, list[str]] = {}
    for name in allowlist:
        if (split := split_mcp_name(name)) is not None:
            by_server.setdefault(split[0], []).append(split[1])
    if not by_server:
        return tool_registry
    rows = [row async for row in McpServer.objects.filter(name__in=list(by_server), enabled=True)]
    groups = await asyncio.gather(
        *(mcp_tools(mcp_hub, server_config(row), by_server[row.name]) for row in rows), return_exceptions=True
    )
    registry = ToolRegistry(tool_registry.tools())
    for row, group in zip(rows, groups, strict=True):
        if isinstance(group, BaseException):
            # Unexpected (mcp_tools turns a server being down into tools that say so): its tools are left
            # out, so calls to them are answered "not available", and the run goes on.
            logger.error("MCP server %s: building its tools failed", row.name, exc_info=group)
            continue
    for tool in (tool for group in groups if not isinstance(group, BaseException) for tool in group):
        try:
            # Never over a project tool that happens to have the same function name.
            registry.register(tool, replace=False)
        except Exception as exc:  # a bad schema, or that name clash: the tool is left out, the run goes on
            logger.warning("MCP tool %s left out: %s", tool.allowlist_name, exc)
    return registry


# --------------------------------------------------------------------------- discovery (sync)
@dataclass(frozen=True, slots=True)
class ToolListing:
    name: str  # what an agent's `tools` lists
    kind: str  # builtin | project | mcp
    description: str
    parameters: dict[str, Any] | None  # JSON Schema of the arguments; None when the server is down
    server: str = ""
    available: bool = True
    error: str = ""


def tool_catalog() -> list[ToolListing]:
    """Every tool an agent may allowlist, with its argument schema. MCP servers are asked (through the
    cached sessions) for their schemas; one that is down is listed with `available: false` and why."""
    listings = [
        ToolListing(
            name=tool.name,
            kind="builtin" if tool.name in _BUILTIN_NAMES else "project",
            description=tool.description,
            parameters=dict(tool.parameters),
        )
        for tool in tool_registry.tools()
    ]
    configs = [server_config(row) for row in McpServer.objects.filter(enabled=True).order_by("name")]
    configs = [config for config in configs if config.allowed_tools]
    if not configs:
        return listings
    # All servers at once, on the run loop where their sessions live; each is bounded by its own timeout.
    future = asyncio.run_coroutine_threadsafe(_list_servers(configs), runner.loop())
    for config, listed in zip(configs, future.result(), strict=True):
        error = listed if isinstance(listed, str) else ""
        by_name = {} if isinstance(listed, str) else {t.name: t for t in listed}
        for tool in config.allowed_tools:
            info = by_name.get(tool)
            why = error or ("" if info else f"the server does not offer a tool named {tool!r}")
            listings.append(
                ToolListing(
                    name=f"{config.name}:{tool}",
                    kind="mcp",
                    description=info.description if info else "",
                    parameters=dict(info.input_schema) if info else None,
                    server=config.name,
                    available=info is not None,
                    error=why,
                )
            )
    return listings


async def _list_servers(configs: Sequence[McpServerConfig]) -> list[list[McpToolInfo] | str]:
    """Each server's tools, or why it could not be listed."""

    async def one(config: McpServerConfig) -> list[McpToolInfo] | str:
        try:
            async with asyncio.timeout(config.timeout + 1):
                return await mcp_hub.list_tools(config)
        except McpUnavailable as exc:
            return str(exc)
        except TimeoutError:
            return f"MCP server {config.name!r} did not answer within {config.timeout:g} s"

    return list(await asyncio.gather(*(one(config) for config in configs)))
