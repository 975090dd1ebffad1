"""A small MCP server written with the SDK's FastMCP, for the tool tests.

`python -m tests.agents.tools.mcp_server` serves it over stdio (the tests start it as a subprocess); the
HTTP tests mount `build_server().streamable_http_app()` under uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mcp.server.fastmcp import Context, FastMCP


def build_server() -> FastMCP:
    # A new instance per HTTP server: FastMCP's streamable-HTTP session manager runs only once.
    server = FastMCP("test-tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def pid() -> int:
        """The id of the server's process (tests check that sessions are reused)."""
        return os.getpid()

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails, with the given reason."""
        raise ValueError(reason)

    @server.tool()
    async def hang(marker: str) -> str:
        """Write this process's id to `marker`, then never answer (the tests kill the process meanwhile)."""
        await asyncio.to_thread(Path(marker).write_text, str(os.getpid()))
        await asyncio.sleep(3600)
        return "unreachable"

    @server.tool()
    def auth_header(ctx: Context) -> str:
        """The Authorization header the client sent (HTTP only)."""
        request = ctx.request_context.request
        return request.headers.get("authorization", "") if request is not None else ""

    @server.tool()
    def env(name: str) -> str:
        """A variable of the server's environment ("" when unset)."""
        return os.environ.get(name, "")

    @server.tool()
    def secret() -> str:
        """Not in any allowlist: the tests check that it is never offered."""
        return "should never be called"

    return server


if __name__ == "__main__":
    build_server().run("stdio")
