"""Shared by every contender script, in either venv: standard library only.

Each contender runs alone in its own process (so its CPU time and peak RSS are its own, and work it defers to
background threads cannot land on someone else's calls), and prints one JSON line on stdout. The floor (the
raw `openai` SDK against the same fake) is such a process too, in each venv; bench/run.py subtracts it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# What every contender sends: the same system prompt and task, so request and response sizes match.
SYSTEM_PROMPT = "You are a concise assistant."
TASK = "Say hello in one short sentence."
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-not-a-real-key"

Call = Callable[[], Awaitable[Any]]
FirstToken = Callable[[], Awaitable[float]]  # seconds from start to the first streamed text


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


@dataclass
class Samples:
    """Latencies (ms) of one contender's calls and the CPU time (ms, this process, all threads) they took."""

    latencies: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0
    wall_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        n = max(1, len(self.latencies))
        return {
            **summary(self.latencies),
            "cpu_ms_per_call": round(self.cpu_ms / n, 3),
            "wall_s": round(self.wall_ms / 1000, 2),
        }


async def measure(call: Call, *, calls: int, warmup: int) -> Samples:
    """`calls` sequential calls after `warmup` (not counted). CPU is the whole process over the whole window,
    so work a library defers to background threads or tasks is counted too."""
    for _ in range(warmup):
        await call()
    samples = Samples()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.latencies.append((time.perf_counter() - start) * 1000)
    samples.cpu_ms = (time.process_time() - cpu) * 1000
    samples.wall_ms = (time.perf_counter() - wall) * 1000
    return samples


async def measure_first_token(first: FirstToken, *, calls: int, warmup: int) -> Samples:
    for _ in range(warmup):
        await first()
    samples = Samples()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        samples.latencies.append(await first() * 1000)
    samples.cpu_ms = (time.process_time() - cpu) * 1000
    samples.wall_ms = (time.perf_counter() - wall) * 1000
    return samples


def emit(payload: dict[str, Any]) -> None:
    """The one line the orchestrator reads (everything else a library prints goes to stderr)."""
    payload.setdefault("peak_rss_mb", peak_rss_mb())
    payload.setdefault("python", sys.version.split()[0])
    payload.setdefault("versions", versions())
    sys.stdout.write("BENCH-RESULT " + json.dumps(payload) + "\n")
    sys.stdout.flush()


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


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": TASK}]


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


async def run_contender(call: Call, first: FirstToken, *, calls: int, stream_calls: int) -> dict[str, Any]:
    result: dict[str, Any] = {"calls": (await measure(call, calls=calls, warmup=10)).to_dict()}
    if stream_calls:
        samples = await measure_first_token(first, calls=stream_calls, warmup=5)
        result["ttft"] = samples.to_dict()
    return result
