"""Project tools, registered the way a deploying team does: `@agent_tool` in a module named by
AGENT_TOOL_MODULES (the tests load it through the setting)."""

from __future__ import annotations

import asyncio
import time

from apps.agents.engine.function_tools import agent_tool
from apps.agents.engine.tools import ToolError

ORDERS = {7: {"id": 7, "status": "shipped", "items": 3}}


@agent_tool
def lookup_order(order_id: int, include_items: bool = False) -> dict:
    """Find an order by its number."""
    order = ORDERS.get(order_id)
    if order is None:
        raise ToolError(f"no order {order_id}")
    return order if include_items else {k: v for k, v in order.items() if k != "items"}


@agent_tool(name="order_note", description="Add a note to an order.")
async def add_note(order_id: int, note: str) -> str:
    await asyncio.sleep(0)
    return f"noted on {order_id}: {note}"


@agent_tool(timeout=0.2)
def slow_report(days: int) -> str:
    """A report that takes too long (a sync function: it runs in a thread, the loop stays free)."""
    time.sleep(2)
    return "late"


@agent_tool(max_result_chars=100)
def big_export() -> str:
    """An export far larger than the tool's result cap."""
    return "x" * 10_000
