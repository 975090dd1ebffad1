"""What a tool call costs the tool loop: `ToolRegistry.invoke` for a built-in (a sync function, run in a worker
thread), an async project tool, and a tool of the tests' FastMCP server over stdio (a subprocess) and over
streamable HTTP (uvicorn on 127.0.0.1), called from the MCP sessions' home loop and from another loop (a request's
loop: the call crosses threads). Also the first call of a stdio server: spawn, initialize, list.

    .venv/bin/python bench/tools.py [--calls 300]

The engine is pure Python, so no database is involved. Prints a table and writes bench/results/tools.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import threading
import time

import uvicorn
from _root import ROOT

from apps.agents.engine.function_tools import agent_tool
from apps.agents.engine.mcp_tools import McpHub, McpServerConfig, mcp_tools
from apps.agents.engine.tools import ToolRegistry, default_tool_registry
from tests.agents.tools.mcp_server import build_server

RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 0.95), "mean_ms": statistics.fmean(ms)}


async def timed(registry: ToolRegistry, name: str, arguments: dict, calls: int) -> list[float]:
    allowed = [tool.allowlist_name for tool in registry.tools()]
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        outcome = await registry.invoke(name, arguments, allowed=allowed)
        samples.append(time.perf_counter() - started)
        assert not outcome.is_error, outcome.result
    return samples


def start_http_server() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_server().streamable_http_app(), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    calls = parser.parse_args().calls

    home = asyncio.new_event_loop()
    threading.Thread(target=home.run_forever, daemon=True).start()
    hub = McpHub(lambda: home)
    stdio = McpServerConfig(
        "bench",
        "stdio",
        command=(sys.executable, "-m", "tests.agents.tools.mcp_server"),
        allowed_tools=("add",),
    )
    http = McpServerConfig("benchweb", "http", url=start_http_server(), allowed_tools=("add",))

    builtins = default_tool_registry()
    projects = ToolRegistry()

    @agent_tool(registry=projects)
    async def lookup(order_id: int) -> dict:
        """Bench."""
        return {"id": order_id}

    async def on_home() -> dict[str, list[float]]:
        started = time.perf_counter()
        stdio_registry = ToolRegistry(await mcp_tools(hub, stdio, ["add"]))
        first = [time.perf_counter() - started]
        http_registry = ToolRegistry(await mcp_tools(hub, http, ["add"]))
        return {
            "stdio server: spawn + initialize + list (first run)": first,
            "MCP stdio call, on the home loop": await timed(
                stdio_registry, "bench__add", {"a": 1, "b": 2}, calls
            ),
            "MCP HTTP call, on the home loop": await timed(
                http_registry, "benchweb__add", {"a": 1, "b": 2}, calls
            ),
        }

    async def elsewhere() -> dict[str, list[float]]:
        stdio_registry = ToolRegistry(await mcp_tools(hub, stdio, ["add"]))
        http_registry = ToolRegistry(await mcp_tools(hub, http, ["add"]))
        return {
            "built-in calculator (sync, in a thread)": await timed(
                builtins, "calculator", {"expression": "6 * 7"}, calls
            ),
            "async project tool (pydantic-validated)": await timed(
                projects, "lookup", {"order_id": 7}, calls
            ),
            "MCP stdio call, from another loop": await timed(
                stdio_registry, "bench__add", {"a": 1, "b": 2}, calls
            ),
            "MCP HTTP call, from another loop": await timed(
                http_registry, "benchweb__add", {"a": 1, "b": 2}, calls
            ),
        }

    results = asyncio.run_coroutine_threadsafe(on_home(), home).result()
    results.update(asyncio.run(elsewhere()))
    hub.close()

    rows = {name: summary(samples) for name, samples in results.items()}
    width = max(len(name) for name in rows)
    print(f"{'tool call':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'mean ms':>8}")
    for name, row in rows.items():
        print(f"{name:<{width}}  {row['p50_ms']:8.2f}  {row['p95_ms']:8.2f}  {row['mean_ms']:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "calls": calls,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": rows,
    }
    (RESULTS / "tools.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'tools.json'}")


if __name__ == "__main__":
    main()
