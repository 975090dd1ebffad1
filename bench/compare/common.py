"""Shared by every contender script, in either venv: standard library only (openai imported lazily).

Each contender runs in its own process (so its CPU time and peak RSS are its own, and work a library defers
to background threads cannot land on another contender's calls) and is driven by bench/run.py over stdin:

    calls N   -> N sequential calls;            answers {"latencies": [ms...], "cpu_ms": total}
    first N   -> N streamed calls;              answers {"latencies": [ms to the first text token...], ...}
    exit      ->                                answers {"peak_rss_mb", "versions", ...extra} and exits

The orchestrator alternates short blocks between the floor (the raw `openai` SDK against the same fake) and
the contenders, so that all of them see the same moments of a shared, noisy machine. Answers are single
lines starting with `BENCH-RESULT `; anything else a library prints is ignored.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

# What every contender sends: the same system prompt and task, so request and response sizes match.
SYSTEM_PROMPT = "You are a concise assistant."
TASK = "Say hello in one short sentence."
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-not-a-real-key"
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": TASK}]
WARMUP_CALLS = 10
WARMUP_STREAMS = 5

Call = Callable[[], Awaitable[Any]]
FirstToken = Callable[[], Awaitable[float]]  # seconds from start to the first streamed text
Extra = Callable[[], Awaitable[dict[str, Any]]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50": round(percentile(values_ms, 50), 3),
        "p95": round(percentile(values_ms, 95), 3),
        "p99": round(percentile(values_ms, 99), 3),
        "mean": round(sum(values_ms) / len(values_ms), 3) if values_ms else float("nan"),
    }


def peak_rss_mb() -> float:
    """Peak resident set of this process (Linux ru_maxrss is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def versions() -> dict[str, str]:
    """Versions of the libraries that matter, as installed in this venv."""
    from importlib import metadata

    found = {}
    for name in ("openai", "httpx", "litellm", "pydantic-ai-slim", "django", "psycopg", "uvicorn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write("BENCH-RESULT " + json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _calls(call: Call, count: int) -> dict[str, Any]:
    """`count` sequential calls. CPU is the whole process (all threads) over the whole block, so work a
    library defers to background threads or tasks is counted too."""
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - start) * 1000)
    return {"latencies": latencies, "cpu_ms": (time.process_time() - cpu) * 1000}


async def _firsts(first: FirstToken, count: int) -> dict[str, Any]:
    cpu = time.process_time()
    latencies = [await first() * 1000 for _ in range(count)]
    return {"latencies": latencies, "cpu_ms": (time.process_time() - cpu) * 1000}


async def serve(call: Call, first: FirstToken, extra: Extra | None = None) -> None:
    """Warm up, then answer the orchestrator's commands on stdin until `exit` (see module docstring)."""
    for _ in range(WARMUP_CALLS):
        await call()
    for _ in range(WARMUP_STREAMS):
        await first()
    emit({"ready": True})
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "exit":
            break
        command, count = line[0], int(line[1])
        emit(await (_calls(call, count) if command == "calls" else _firsts(first, count)))
    payload: dict[str, Any] = await extra() if extra else {}
    emit({**payload, "peak_rss_mb": peak_rss_mb(), "python": sys.version.split()[0], "versions": versions()})


def openai_calls(base_url: str) -> tuple[Call, FirstToken]:
    """The floor: one AsyncOpenAI client (retries off, as our adapter has them), a plain and a streamed call."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0)

    async def call() -> None:
        response = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        assert response.choices[0].message.content

    async def first() -> float:
        start = time.perf_counter()
        got = None
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if got is None and chunk.choices and chunk.choices[0].delta.content:
                got = time.perf_counter() - start
        assert got is not None
        return got

    return call, first
