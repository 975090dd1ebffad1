"""A fake provider server: a small ASGI app under a real uvicorn on 127.0.0.1:<random port>, in a thread.

Each provider fake (OpenAI, Anthropic, Gemini) subclasses FakeProviderServer and maps a scripted `Reply` onto
its wire format, JSON or SSE. Tests queue replies and faults, then assert on `requests` (what was sent) and
`disconnects` (the client closed the connection before the response was done).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

FaultKind = Literal["status", "slow_first_byte", "hang", "cut_stream", "malformed_json", "drop_connection"]


@dataclass
class Fault:
    """What goes wrong with the next request(s).

    status: answer `status` with the provider's error body (and Retry-After when `retry_after` is set).
    slow_first_byte: wait `delay` seconds before the first byte, then answer normally.
    hang: never answer (until the client gives up or disconnects).
    cut_stream: stream `after_chunks` text chunks, then end the body without a finish event (with `abrupt`,
        drop the socket instead, so the client sees a broken transfer rather than an early end).
    malformed_json: answer 200 with a body that is not JSON, or with `body` (the OpenAI fake: the whole
        answer, or a stream's one event).
    drop_connection: close the socket without any response.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    after_chunks: int = 1
    message: str = "fake failure"
    code: str | None = None  # provider error code in the body, e.g. "content_policy_violation"
    abrupt: bool = False
    body: bytes | None = None


@dataclass
class Reply:
    """A scripted successful answer. `chunks` splits the text for streams (default: word by word)."""

    text: str = "Hello from the fake provider."
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "name", "arguments": {...}}]
    input_tokens: int = 11
    output_tokens: int = 7
    finish_reason: str | None = None  # provider-specific default when None
    model: str | None = None  # default: the model asked for
    chunk_delay: float = 0.0  # seconds between streamed chunks
    refusal: str | None = None  # the model declines (OpenAI `message.refusal`; others map it as they can)

    def pieces(self) -> list[str]:
        if not self.text:
            return []
        words = self.text.split(" ")
        return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


class FakeProviderServer:
    provider = "fake"

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.replies: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.completed_responses = 0
        # Bumped by reset(): a handler still finishing a previous test's request (a hang the client gave up
        # on) must not count a disconnect against the next test.
        self._generation = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ test controls
    def fail(self, fault: Fault, times: int = 1) -> None:
        for _ in range(times):
            self.faults.append(fault)

    def reply(self, reply: Reply | None = None, **kwargs: Any) -> None:
        self.replies.append(reply or Reply(**kwargs))

    def reset(self) -> None:
        self.faults.clear()
        self.replies.clear()
        self.requests.clear()
        self.disconnects = 0
        self.completed_responses = 0
        self._generation += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.disconnects:
                return True
            time.sleep(0.01)
        return bool(self.disconnects)

    def outcomes(self, count: int = 1, timeout: float = 2.0) -> tuple[int, int]:
        """(completed_responses, disconnects) once `count` responses have ended on the server's side. A client
        can finish reading a stream a moment before this server's handler records that the response was
        complete, so read these counters through here, not directly, after a response was read."""
        deadline = time.monotonic() + timeout
        while self.completed_responses + self.disconnects < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.completed_responses, self.disconnects

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeProviderServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="warning", lifespan="off", access_log=False, loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ ASGI plumbing
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = RecordedRequest(
            scope["method"], scope["path"], headers, body, scope.get("query_string", b"").decode("latin-1")
        )
        self.requests.append(request)
        exchange = Exchange(self, receive, send)
        fault = self.faults.popleft() if self.faults else None
        generation = self._generation
        try:
            await self.handle(request, exchange, fault)
            if generation == self._generation:
                self.completed_responses += 1
        except ClientGone:
            if generation == self._generation:
                self.disconnects += 1
        except ServerDropped:
            pass
        finally:
            exchange.finish()

    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        """Provider-specific: answer `request`, honouring `fault` (see Fault). Override in subclasses."""
        raise NotImplementedError

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else Reply()


class ClientGone(Exception):
    """The client closed the connection."""


class ServerDropped(Exception):
    """The fake closed the connection on purpose (drop_connection): neither a response nor a disconnect."""


class Exchange:
    """Helpers to answer one request, noticing when the client goes away."""

    def __init__(self, server: FakeProviderServer, receive: Any, send: Any) -> None:
        self.server = server
        self._receive = receive
        self._send = send
        self._gone = asyncio.Event()
        self._finished = False
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            # Once the response is complete the server reports http.disconnect by itself: that is not the
            # client going away, so it must not count as one.
            if message["type"] == "http.disconnect" and not self._finished:
                self._gone.set()
                return

    def finish(self) -> None:
        """Stop watching for a disconnect (the response is complete, or the handler is done)."""
        self._finished = True
        self._watcher.cancel()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise ClientGone as soon as the client disconnects."""
        try:
            await asyncio.wait_for(self._gone.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise ClientGone

    async def hang(self) -> None:
        await self._gone.wait()
        raise ClientGone

    async def start(
        self, status: int, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        if self._gone.is_set():
            raise ClientGone
        all_headers = [(b"content-type", content_type.encode())]
        for key, value in (headers or {}).items():
            all_headers.append((key.lower().encode(), str(value).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": all_headers})

    async def write(self, data: bytes, more: bool = True) -> None:
        if self._gone.is_set():
            raise ClientGone
        if not more:
            self.finish()
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
            return
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        # Yield so that a disconnect is noticed between chunks.
        await asyncio.sleep(0)
        if self._gone.is_set():
            raise ClientGone

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        await self.start(status, headers)
        await self.write(json.dumps(payload).encode(), more=False)

    async def raw(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        await self.start(status, content_type=content_type)
        await self.write(data, more=False)

    async def sse(self, data: Any, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        await self.write(f"{prefix}data: {text}\n\n".encode())

    async def close(self) -> None:
        """Finish the response body (a clean close; for a cut stream call this without a finish event)."""
        if self._gone.is_set():
            raise ClientGone
        self.finish()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def abort(self) -> None:
        """Drop the connection without (the rest of) a response.

        Raising out of the ASGI app is not enough: before the response has started, uvicorn answers 500
        instead. So close the socket itself, reached through uvicorn's send callable (its request cycle holds
        the transport); wait until uvicorn has noticed, so that it sends nothing more.
        """
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is None:
            raise RuntimeError("cannot reach the connection's transport (uvicorn internals changed)")
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), timeout=1.0)
        self.finish()
        raise ServerDropped
