"""A lean HTTP/1.1 load generator and an httpx first-token timer for the HTTP contenders (project venv).

Bounded twice: at most `max_requests` requests and at most `duration` seconds per run; it then stops by
itself. Only ever pointed at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
    # The first-token timer's client (sequential streamed requests, one connection).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0), trust_env=False)


class HTTPFailure(Exception):
    """The connection closed, or the answer was not HTTP/1.1 as expected."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends the same request again and again.

    The load generator shares the machine's two cores with the server it measures, so its own CPU per
    request is taken from every contender's requests/s alike and flattens their ratio. An httpx client per
    connection took 0.47-0.59 ms of CPU per request (c=16, against the fake: 1,700-2,100 req/s); this takes
    0.03-0.04 ms (18,000-20,000 req/s, the fake's single process then the limit). The request's bytes are
    made once, and an answer is read only as far as HTTP needs: status line, Content-Length or chunked
    framing, body. make bench records what it took per request (`generator_cpu_ms_per_request`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HTTPFailure(f"connection closed: {exc or 'by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            answer = _parse(self._buffer)
        except HTTPFailure as exc:
            self._waiter.set_exception(exc)
            return
        if answer is not None:
            status, body, used = answer
            del self._buffer[:used]
            self._waiter.set_result((status, body))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.transport is None:
            raise HTTPFailure("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the complete answer at the start of `buffer`, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).split(b"\r\n")
    parts = head[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPFailure(f"not an HTTP/1.1 answer: {head[0][:80]!r}")
    length, chunked = None, False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    start = end + 4
    if not chunked:
        if length is None:
            raise HTTPFailure("an answer with neither Content-Length nor chunked framing")
        if len(buffer) < start + length:
            return None
        return int(parts[1]), bytes(buffer[start : start + length]), start + length
    body, at = bytearray(), start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if len(buffer) < at + size + 2:
            return None
        if size == 0:  # no trailers are sent by the servers measured here
            return int(parts[1]), bytes(body), at + 2
        body += buffer[at : at + size]
        at += size + 2


def _request_bytes(target: Target) -> bytes:
    url = urlsplit(target.url)
    body = json.dumps(target.body).encode()
    headers = {
        "Host": url.netloc,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Accept": "*/*",
        **target.headers,
    }
    head = f"POST {url.path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + body


#: Between two connections a Pool opens (see Pool.open).
OPEN_PAUSE_SECONDS = 0.01


class Pool:
    """`concurrency` keep-alive connections to one target, kept across the turns of a run so that they are
    opened (and the server warmed up) once, outside any timed window. A connection the server closed is
    opened again before the next request."""

    def __init__(self, target: Target, concurrency: int) -> None:
        self.target = target
        self.concurrency = concurrency
        self.request = _request_bytes(target)
        self.connections: list[Connection] = []

    async def _connect(self) -> Connection:
        url = urlsplit(self.target.url)
        _, connection = await asyncio.get_running_loop().create_connection(Connection, url.hostname, url.port)
        return connection

    async def _post(self, index: int) -> tuple[int, bytes]:
        if self.connections[index].transport is None:
            self.connections[index] = await self._connect()
        return await asyncio.wait_for(self.connections[index].send(self.request), 30.0)

    async def open(self, warmup: int = 3) -> None:
        # One at a time, a few milliseconds apart, as a client's pool fills: the LiteLLM proxy's workers share
        # one listening socket, and connections that arrive together are all accepted by whichever worker
        # wakes first (one process then serves every request of the run while the other idles; bench/run.py
        # records each process's share). Ours are unaffected (a socket per worker, config/serve.py).
        for _ in range(self.concurrency):
            self.connections.append(await self._connect())
            await asyncio.sleep(OPEN_PAUSE_SECONDS)
        await asyncio.gather(*(self._post(index) for index in range(self.concurrency)))
        for _ in range(warmup):
            await self._post(0)

    async def run(self, *, max_requests: int, duration: float) -> LoadResult:
        """Every connection POSTs back to back until `max_requests` were sent or `duration` has passed."""
        expect = self.target.expect
        result = LoadResult(self.concurrency)
        issued = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker(index: int) -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter()
                try:
                    status, body = await self._post(index)
                    good = status == 200 and expect in body
                    problem = f"{status}: {body[:300].decode(errors='replace')}"
                except (OSError, HTTPFailure, TimeoutError) as exc:
                    self.connections[index].close()
                    good, problem = False, f"{type(exc).__name__}: {exc}"
                if good:
                    result.ok += 1
                    result.latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or problem

        await asyncio.gather(*(worker(index) for index in range(self.concurrency)))
        result.elapsed = time.perf_counter() - start
        return result

    async def aclose(self) -> None:
        for connection in self.connections:
            connection.close()


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
