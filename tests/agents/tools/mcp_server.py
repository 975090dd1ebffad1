"""A small MCP server written with the SDK's FastMCP, for the tool tests.

`python -m tests.agents.tools.mcp_server` serves it over stdio (the tests start it as a subprocess); the
HTTP tests mount `server.streamable_http_app()` under uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("test-tools")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


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


if __name__ == "__main__":
    server.run("stdio")
