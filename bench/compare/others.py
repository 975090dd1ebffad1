"""The in-process contenders we compare against (bench venv): `litellm.acompletion` and a pydantic-ai
`Agent.run`, and the floor (the raw `openai` SDK) of this venv; one per process.

    .venv-bench/bin/python -m bench.compare.others litellm|pydantic_ai|openai --base-url URL   # see common.py

Nothing here writes anything anywhere: these libraries keep no record of a run (that is the work our rows do
on top). LiteLLM is told to use its bundled cost map (no download) and to send no telemetry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("LITELLM_LOG", "ERROR")


from bench.compare.common import (
    API_KEY,
    MESSAGES,
    MODEL,
    SYSTEM_PROMPT,
    TASK,
    openai_calls,
    serve,
)


def litellm_calls(base_url: str) -> tuple[Any, Any]:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True

    async def call() -> None:
        response = await litellm.acompletion(
            model=f"openai/{MODEL}", messages=MESSAGES, api_base=base_url, api_key=API_KEY, num_retries=0
        )
        assert response.choices[0].message.content

    async def first() -> float:
        start = time.perf_counter()
        got = None
        stream = await litellm.acompletion(
            model=f"openai/{MODEL}",
            messages=MESSAGES,
            api_base=base_url,
            api_key=API_KEY,
            stream=True,
            stream_options={"include_usage": True},
            num_retries=0,
        )
        async for chunk in stream:
            if got is None and chunk.choices and chunk.choices[0].delta.content:
                got = time.perf_counter() - start
        assert got is not None
        return got

    return call, first


def pydantic_ai_calls(base_url: str) -> tuple[Any, Any]:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=base_url, api_key=API_KEY))
    agent = Agent(model, instructions=SYSTEM_PROMPT)

    async def call() -> None:
        result = await agent.run(TASK)
        assert result.output

    async def first() -> float:
        start = time.perf_counter()
        got = None
        async with agent.run_stream(TASK) as result:
            async for text in result.stream_text(delta=True, debounce_by=None):
                if got is None and text:
                    got = time.perf_counter() - start
        assert got is not None
        return got

    return call, first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["openai", "litellm", "pydantic_ai"])
    parser.add_argument("--base-url", required=True)
    args = parser.parse_args()
    factory = {"openai": openai_calls, "litellm": litellm_calls, "pydantic_ai": pydantic_ai_calls}[args.which]
    asyncio.run(serve(*factory(args.base_url)))


if __name__ == "__main__":
    main()
