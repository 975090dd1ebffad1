"""MCP servers as tool providers, through the official `mcp` SDK (client side only).

Staff register a server (services layer: a name, a transport, the tool names allowed); an agent allowlists
`server:tool` names. For a run, `mcp_tools()` turns those names into ordinary Tools whose function calls the
server, so the tool loop treats them like any other tool: a call that fails, times out, or reaches a server
that is down or died becomes an error result the model reads, never a failed run.

Connections are per process, reused across runs: an `McpHub` keeps one session per server on a *home* event
loop (the service's long-lived run loop) and callers on any other loop reach it through
run_coroutine_threadsafe. A session's transport (a subprocess, or an HTTP client with its GET stream) lives in
one task for its whole life, because anyio's task groups must be entered and left in the same task. A
session that breaks is dropped and the next call opens a new one. Tool lists are cached per session.

Pure Python: the configs are plain dataclasses built by the services layer; nothing here imports Django.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from mcp import ClientSession, McpError, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CONNECTION_CLOSED, CallToolResult, TextContent

from apps.agents.engine.tools import Tool, ToolError

logger = logging.getLogger("apps.agents.engine.mcp")

T = TypeVar("T")

#: Seconds a tool list stays cached before it is asked for again.
TOOL_LIST_TTL = 300.0
#: What the model is offered for a tool whose server could not be listed: any object.
ANY_ARGUMENTS: Mapping[str, Any] = {"type": "object"}
_WIRE_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    name: str
    transport: Literal["stdio", "http"]
    command: tuple[str, ...] = ()  # stdio: the program and its arguments
    url: str = ""  # http: the streamable-HTTP endpoint
    #: Header values, already read from the environment. Secrets: kept out of repr and logs.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: stdio: variables added to the server's (otherwise minimal) environment. Secrets too.
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allowed_tools: tuple[str, ...] = ()
    timeout: float = 30.0  # seconds for connecting, listing, and each call


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    name: str
    description: str
    input_schema: Mapping[str, Any]


class McpUnavailable(Exception):
    """The server cannot be reached (not started, refused, died). The message is safe to show the model."""


def wire_name(server: str, tool: str) -> str:
    """The function name the model sees for `server:tool` (providers accept only [a-zA-Z0-9_-], 64 max)."""
    return _WIRE_UNSAFE.sub("_", f"{server}__{tool}")[:64]


# --------------------------------------------------------------------------- one session
class _Connection:
    """One live session to one server, held open by its own task until closed or broken."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.session: ClientSession | None = None
        self.error: str | None = None
        self.tools: list[McpToolInfo] | None = None
        self.listed_at = 0.0
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(), name=f"mcp-session:{config.name}")

    @property
    def alive(self) -> bool:
        return not self._task.done() and not self._stop.is_set()

    async def _hold(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open(stack)
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # any transport failure: recorded, told to the caller, logged
            self.error = _describe(exc)
            logger.warning("MCP server %s: session ended: %s", self.config.name, self.error)
        finally:
            self.session = None
            self._stop.set()
            self._ready.set()

    async def _open(self, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
        config = self.config
        if config.transport == "stdio":
            program, *arguments = config.command
            # The SDK's default environment (PATH, HOME...), not this process's: the platform's provider keys
            # are no business of a tool server's.
            environment = {**get_default_environment(), **dict(config.env)}
            params = StdioServerParameters(command=program, args=arguments, env=environment)
            read, write = await stack.enter_async_context(stdio_client(params))
            return read, write
        client = httpx.AsyncClient(
            headers=dict(config.headers), timeout=httpx.Timeout(config.timeout, read=max(config.timeout, 300))
        )
        await stack.enter_async_context(client)
        read, write, _ = await stack.enter_async_context(
            streamable_http_client(config.url, http_client=client)
        )
        return read, write

    async def ready(self) -> ClientSession:
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise McpUnavailable(
                f"MCP server {self.config.name!r} did not start within {self.config.timeout:g} s"
            ) from None
        if self.session is None:
            raise McpUnavailable(f"MCP server {self.config.name!r} is unavailable: {self.error or 'closed'}")
        return self.session

    async def close(self) -> None:
        self._stop.set()
        if self._task.done():
            return
        done, _ = await asyncio.wait([self._task], timeout=5)
        if not done:  # a transport that will not shut down cleanly (a hung subprocess)
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------- sessions of one loop
class McpSessions:
    """The sessions of one event loop, one per server name."""

    def __init__(self, *, list_ttl: float = TOOL_LIST_TTL) -> None:
        self._connections: dict[str, _Connection] = {}
        self._list_ttl = list_ttl
        self._opening: dict[str, asyncio.Lock] = {}

    async def _connection(self, config: McpServerConfig) -> tuple[_Connection, ClientSession]:
        lock = self._opening.setdefault(config.name, asyncio.Lock())
        async with lock:  # two runs starting at once share one new session
            current = self._connections.get(config.name)
            if current is not None and (not current.alive or current.config != config):
                # Broken, or staff changed the server: open a new session.
                await current.close()
                current = None
            if current is None:
                current = self._connections[config.name] = _Connection(config)
        return current, await current.ready()

    async def _drop(self, connection: _Connection) -> None:
        if self._connections.get(connection.config.name) is connection:
            del self._connections[connection.config.name]
        await connection.close()

    async def list_tools(self, config: McpServerConfig) -> list[McpToolInfo]:
        connection, session = await self._connection(config)
        if connection.tools is not None and time.monotonic() - connection.listed_at < self._list_ttl:
            return connection.tools
        try:
            async with asyncio.timeout(config.timeout):
                listed = await session.list_tools()
        except Exception as exc:
            await self._drop(connection)
            raise McpUnavailable(
                f"MCP server {config.name!r} could not list its tools: {_describe(exc)}"
            ) from None
        connection.tools = [
            McpToolInfo(tool.name, tool.description or "", dict(tool.inputSchema)) for tool in listed.tools
        ]
        connection.listed_at = time.monotonic()
        return connection.tools

    async def call_tool(self, config: McpServerConfig, tool: str, arguments: Mapping[str, Any]) -> Any:
        """The tool's result (structured content, else its text). Raises ToolError for anything the model
        should read instead: the tool's own error, a server that is down, a connection that broke."""
        try:
            connection, session = await self._connection(config)
        except McpUnavailable as exc:
            raise ToolError(str(exc)) from None
        try:
            result = await session.call_tool(tool, dict(arguments))
        except McpError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                await self._drop(connection)
                raise ToolError(
                    f"MCP server {config.name!r} closed the connection during the call (it may have stopped)"
                ) from None
            raise ToolError(f"MCP server {config.name!r}: {exc.error.message}") from None
        except Exception as exc:
            await self._drop(connection)
            raise ToolError(f"MCP server {config.name!r} is unavailable: {_describe(exc)}") from None
        return _result_value(result, f"{config.name}:{tool}")

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.close()


def _result_value(result: CallToolResult, label: str) -> Any:
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if result.isError:
        raise ToolError(f"{label} failed: " + ("\n".join(texts) or "no details"))
    if result.structuredContent is not None:
        return result.structuredContent
    if len(texts) == 1:
        return texts[0]
    return texts or [block.model_dump(mode="json", exclude_none=True) for block in result.content]


# --------------------------------------------------------------------------- the per-process hub
class McpHub:
    """Process-wide MCP sessions on one home loop, callable from any loop or thread."""

    def __init__(self, home_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._home_loop = home_loop
        self._sessions: dict[asyncio.AbstractEventLoop, McpSessions] = {}

    async def _on_home(self, work: Callable[[McpSessions], Coroutine[Any, Any, T]]) -> T:
        home = self._home_loop()
        if home is asyncio.get_running_loop():
            return await work(self._sessions_of(home))
        # Cancelling the awaiting run cancels the wrapped future, which cancels the task on the home loop.
        future = asyncio.run_coroutine_threadsafe(self._run(home, work), home)
        return await asyncio.wrap_future(future)

    async def _run(self, home: asyncio.AbstractEventLoop, work: Callable[[McpSessions], Any]) -> Any:
        return await work(self._sessions_of(home))

    def _sessions_of(self, loop: asyncio.AbstractEventLoop) -> McpSessions:
        sessions = self._sessions.get(loop)
        if sessions is None:
            # A new home loop (after a fork): the old loop's sessions belong to the parent process.
            self._sessions = {loop: (sessions := McpSessions())}
        return sessions

    async def list_tools(self, config: McpServerConfig) -> list[McpToolInfo]:
        return await self._on_home(lambda sessions: sessions.list_tools(config))

    async def call_tool(self, config: McpServerConfig, tool: str, arguments: Mapping[str, Any]) -> Any:
        return await self._on_home(lambda sessions: sessions.call_tool(config, tool, arguments))

    def close(self, timeout: float = 10.0) -> None:
        """Close every session (from a thread that is not the home loop's: tests, shutdown)."""
        home = self._home_loop()
        future = asyncio.run_coroutine_threadsafe(self._run(home, lambda s: s.aclose()), home)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(timeout)


# --------------------------------------------------------------------------- tools for a run
async def mcp_tools(hub: McpHub, config: McpServerConfig, names: Iterable[str]) -> list[Tool]:
    """Tools for the allowlisted tool `names` of one server (names the server's config no longer allows are
    left out). A server that cannot be listed still yields its tools, with a permissive schema: a call
    tries the server again, and the model reads why it failed."""
    wanted = [name for name in dict.fromkeys(names) if name in config.allowed_tools]
    if not wanted:
        return []
    try:
        listed: dict[str, McpToolInfo] | None = {t.name: t for t in await hub.list_tools(config)}
        why = ""
    except McpUnavailable as exc:
        listed, why = None, str(exc)
    tools = []
    for name in wanted:
        info = listed.get(name) if listed is not None else None
        if listed is not None and info is None:
            why = f"MCP server {config.name!r} does not offer a tool named {name!r}"
        description = info.description if info is not None else f"({why}) Tool {name} of {config.name}."
        tools.append(
            Tool(
                name=wire_name(config.name, name),
                key=f"{config.name}:{name}",
                description=description,
                parameters=_usable_schema(info.input_schema) if info is not None else ANY_ARGUMENTS,
                function=_caller(hub, config, name, None if info is not None or listed is None else why),
                timeout=config.timeout,
            )
        )
    return tools


def _usable_schema(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    # Servers usually send {"type": "object", ...}; a bare {} is what "no arguments" looks like on the wire.
    return schema if schema.get("type") == "object" else {**json.loads(json.dumps(schema)), "type": "object"}


def _caller(hub: McpHub, config: McpServerConfig, tool: str, missing: str | None) -> Callable[..., Any]:
    async def call(**arguments: Any) -> Any:
        if missing:
            raise ToolError(missing)
        return await hub.call_tool(config, tool, arguments)

    return call
