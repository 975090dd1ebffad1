"""An async httpx load generator and first-token timer for the HTTP contenders (project venv).

Bounded twice: at most `max_requests` requests and at most `duration` seconds per run; it then stops by
itself. Only ever pointed at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.compare.common import summary


@dataclass(frozen=True)
class Target:
    """One HTTP contender: where to POST, with what, and how to see the first streamed token."""

    name: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream_body: dict[str, Any]
    stream_headers: dict[str, str] = field(default_factory=dict)
    expect: bytes = b"Hello from the fake provider."


@dataclass
class LoadResult:
    concurrency: int
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def merge(self, other: LoadResult) -> None:
        """Add another run at the same concurrency (the runs of one target in several turns)."""
        self.ok += other.ok
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.first_error = self.first_error or other.first_error

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.ok / self.elapsed, 1) if self.elapsed else 0.0,
            "latency_ms": summary(self.latencies) if self.latencies else None,
        }


def _client() -> httpx.AsyncClient:
    # One client with one connection per worker: a single client whose pool is shared by 16 or 64 workers
    # collapses here (httpcore's pool hands connections over slowly: ~200 req/s at 64 workers against a fake
    # that serves 3,000), so it would measure itself instead of the server. Per-worker clients reach
    # ~1,100-1,300 req/s against the fake, far above any contender, and every contender gets the same client.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0), trust_env=False)


class Pool:
    """`concurrency` clients for one target, kept across the turns of a run so that connections are opened
    (and the server warmed up) once, outside any timed window."""

    def __init__(self, target: Target, concurrency: int) -> None:
        self.target = target
        self.concurrency = concurrency
        self.clients = [_client() for _ in range(concurrency)]

    async def open(self, warmup: int = 3) -> None:
        target = self.target
        await asyncio.gather(
            *(client.post(target.url, json=target.body, headers=target.headers) for client in self.clients)
        )
        for _ in range(warmup):
            await self.clients[0].post(target.url, json=target.body, headers=target.headers)

    async def run(self, *, max_requests: int, duration: float) -> LoadResult:
        """Every client POSTs back to back until `max_requests` were sent or `duration` has passed."""
        target = self.target
        result = LoadResult(self.concurrency)
        issued = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(target.url, json=target.body, headers=target.headers)
                    good = response.status_code == 200 and target.expect in response.content
                    problem = f"{response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as exc:
                    good, problem = False, f"{type(exc).__name__}: {exc}"
                if good:
                    result.ok += 1
                    result.latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or problem

        await asyncio.gather(*(worker(client) for client in self.clients))
        result.elapsed = time.perf_counter() - start
        return result

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))


def _is_first_token(event: str, data: str) -> bool:
    """Our SSE: `event: output.delta` with text. OpenAI-style SSE: a chunk whose delta has content."""
    if event == "output.delta":
        return bool(json.loads(data).get("text"))
    if event or not data.startswith("{"):
        return False
    choices = json.loads(data).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def first_tokens(target: Target, *, calls: int, warmup: int = 3) -> tuple[list[float], int, str]:
    """Sequential streamed requests: ms from sending to the first text token, each stream read to its end.
    Returns the samples, how many requests failed (no 200, or no text token) and the first failure."""
    samples: list[float] = []
    errors, first_error = 0, ""
    headers = {**target.headers, **target.stream_headers}
    async with _client() as client:
        for index in range(warmup + calls):
            sent = time.perf_counter()
            first = None
            async with client.stream(
                "POST", target.url, json=target.stream_body, headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    errors += 1
                    first_error = first_error or f"{response.status_code}: {response.text[:300]}"
                    continue
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        if first is None and _is_first_token(event, line[5:].strip()):
                            first = (time.perf_counter() - sent) * 1000
                    elif not line:
                        event = ""
            if first is None:
                errors += 1
                first_error = first_error or "the stream ended without a text token"
            elif index >= warmup:
                samples.append(first)
    return samples, errors, first_error
