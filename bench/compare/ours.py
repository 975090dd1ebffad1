"""Our side of the comparison (project venv): the bench database, its agent and user, and
`execution_engine.execute_agent` / `execute_streaming` in-process against the fake.

    .venv/bin/python -m bench.compare.ours setup                 # migrate, create agent + user, print token
    .venv/bin/python -m bench.compare.ours inprocess --base-url URL [--contender ours|openai]   # see common.py

The orchestrator (bench/run.py) sets DATABASE_URL (PostgreSQL), OPENAI_API_KEY / OPENAI_BASE_URL (the fake)
and LOCAL_ENABLED=false. Every run of ours writes its real execution row (INSERT running, then the final
UPDATE with attempts, tokens and Decimal cost): that is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._django import setup
from bench.compare.common import MODEL, SYSTEM_PROMPT, TASK, emit, openai_calls, serve

AGENT_ID = "bench-agent"
USERNAME = "bench-user"


def ensure_fixtures() -> tuple[Any, Any, str]:
    """The bench agent (task agent, openai, no schema, no retries needed) and a user with an API token."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.agents.models import Agent

    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    token, _ = Token.objects.get_or_create(user=user)
    agent, _ = Agent.objects.update_or_create(
        agent_id=AGENT_ID,
        defaults={
            "name": "Bench agent",
            "owner": user,
            "agent_type": "task",
            "system_prompt": SYSTEM_PROMPT,
            "preferred_platform": "openai",
            "model": MODEL,
            "output_schema": None,
            "tools": [],
            "is_active": True,
        },
    )
    return agent, user, token.key


async def serve_inprocess(base_url: str, contender: str) -> None:
    from asgiref.sync import sync_to_async

    from apps.agents.engine.events import OutputDelta
    from apps.agents.models import AgentExecution
    from apps.agents.services import execution_engine

    if contender == "openai":
        await serve(*openai_calls(base_url))
        return

    agent, user, _ = await sync_to_async(ensure_fixtures)()
    before = await AgentExecution.objects.acount()

    async def ours() -> None:
        result = await execution_engine.execute_agent(agent, {"task": TASK}, user)
        if not result.success:
            raise RuntimeError(f"our run failed: {result.error}")

    async def ours_first() -> float:
        start = time.perf_counter()
        first = None
        async for event in execution_engine.execute_streaming(agent, {"task": TASK}, user):
            if first is None and isinstance(event, OutputDelta) and event.text:
                first = time.perf_counter() - start
        assert first is not None
        return first

    async def proof() -> dict[str, Any]:
        """In the output, that the rows are real: how many, and the status, attempts and cost of the last."""
        last = await AgentExecution.objects.order_by("-created_at").afirst()
        assert last is not None
        return {
            "rows_written": await AgentExecution.objects.acount() - before,
            "last_row": {
                "status": last.status,
                "mode": last.mode,
                "attempts": len(last.attempts),
                "cost": str(last.cost),
                "tokens": last.input_tokens + last.output_tokens,
            },
        }

    await serve(ours, ours_first, proof)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "inprocess"])
    parser.add_argument("--base-url", default="")
    parser.add_argument("--contender", choices=["ours", "openai"], default="ours")
    args = parser.parse_args()
    setup("bench_compare")
    if args.command == "setup":
        _, _, token = ensure_fixtures()
        emit({"token": token, "agent_id": AGENT_ID})
        return
    asyncio.run(serve_inprocess(args.base_url, args.contender))


if __name__ == "__main__":
    main()
