"""`stream: true`: the engine's events as OpenAI `chat.completion.chunk` server-sent events.

    data: {role chunk}            delta {"role": "assistant", "content": ""}
    data: {content chunk} ...     delta {"content": "..."} per OutputDelta
    data: {final chunk}           delta {}, finish_reason
    data: {usage chunk}           choices [], usage       (only with stream_options.include_usage)
    data: [DONE]

A run that fails *before any output* (every platform down, a refusal, a timeout) is answered as an ordinary
HTTP error (502 / 504 with OpenAI's error body), so `client.chat.completions.create(stream=True)` raises
APIStatusError as for a non-streamed call: the response is held back until the first text arrives, for at
most the ping interval (a client would see nothing but a ping before then anyway). After that the stream is
committed to 200; a later failure is sent as `data: {"error": {...}}` (which the openai SDK raises as
APIError) with no `[DONE]`. `: ping` comments keep idle proxies from closing a slow stream.

Client disconnect: Django's ASGI handler cancels the request task; that cancellation reaches the engine's
event iterator (or, if the response was never iterated, the request task's done-callback closes it), and the
engine closes the upstream request and records the execution `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase, StreamingHttpResponse

from apps.agents.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
)
from apps.agents.openai_compat.errors import OpenAIError, run_failure
from apps.agents.openai_compat.responses import ChunkFactory, client_tool_calls, output_text
from apps.agents.openai_compat.schemas import ChatRequest

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
# How long a cancelled run may take to record itself before the response stops waiting for it.
CANCEL_GRACE_SECONDS = 10.0
# How long the engine's stream may take to end after its terminal event (it has nothing left to do).
END_GRACE_SECONDS = 1.0
TERMINAL = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled)
SERVER_ERROR = OpenAIError("The stream failed on the server.", status=500, code="server_error")

_TIMEOUT = object()
_END = object()
# Tasks started from done-callbacks, kept alive until they finish (asyncio holds only weak references).
_closers: set[asyncio.Task[None]] = set()


def ping_seconds() -> float:
    return float(getattr(settings, "SSE_PING_SECONDS", 15.0))


def sse(data: Any) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8", "replace")


class EventReader:
    """Reads the engine's event iterator with a timeout that never cancels it.

    Cancelling a pending `__anext__` of the engine's stream cancels the run, so waiting "at most N seconds"
    cannot be `wait_for(anext(...))`: the read is a task of its own, waited on with `asyncio.wait`, and
    picked up again on the next call when it was not done yet.
    """

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self._events = events
        self._pending: asyncio.Future[Any] | None = None
        self.closed = False

    async def next(self, wait: float | None = None) -> Any:
        """The next event, `_END` after the last, `_TIMEOUT` when none came within `wait` seconds."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._events, _END))
        done, _ = await asyncio.wait([self._pending], timeout=wait)
        if not done:
            return _TIMEOUT
        read, self._pending = self._pending, None
        return read.result()

    async def aclose(self) -> None:
        """Stop the run if it is still going (the engine records it cancelled). Idempotent."""
        if self.closed:
            return
        self.closed = True
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait([pending], timeout=CANCEL_GRACE_SECONDS)
            if not pending.done():
                logger.warning("a cancelled stream did not finish recording within %ss", CANCEL_GRACE_SECONDS)
                return
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):  # already closed by the cancellation above
                await aclose()

    async def finish(self) -> None:
        """After the terminal event: let the engine's stream end by itself (it has recorded the run), then
        close. Closing it at its last `yield` instead would leave the engine's inner generator to the GC."""
        if not self.closed:
            await self.next(END_GRACE_SECONDS)
        await self.aclose()

    def close_when_done(self, task: asyncio.Task[Any] | None) -> None:
        """Safety net: when `task` (the request) ends, close the run even if the response body was never
        iterated (the client left between the headers and the body)."""
        if task is None:
            return

        def close(_: object) -> None:
            if not self.closed:
                closer = asyncio.get_running_loop().create_task(self.aclose())
                _closers.add(closer)
                closer.add_done_callback(_closers.discard)

        task.add_done_callback(close)


async def stream_chat(events: AsyncIterator[Any], chat: ChatRequest) -> HttpResponseBase:
    """Start the run, wait for its first text (or its early failure), then answer with the event stream.

    Bad input raises ApplicationError from the first read, before any row exists; the caller renders it.
    """
    reader = EventReader(events)
    held: list[Any] = []
    try:
        created = await reader.next()
        if not isinstance(created, ExecutionCreated):
            raise RuntimeError(f"the engine's stream began with {created!r}")
        loop = asyncio.get_running_loop()
        hold_until = loop.time() + ping_seconds()
        while True:
            event = await reader.next(max(0.0, hold_until - loop.time()))
            if event is _TIMEOUT:
                break
            if event is _END:
                raise RuntimeError("the engine's stream ended without a terminal event")
            if isinstance(event, ExecutionFailed | ExecutionCancelled):
                await reader.finish()
                return run_failure(event.result, created.execution_id).response()
            if isinstance(event, OutputDelta | ExecutionCompleted):
                held.append(event)
                break
    except BaseException:
        await reader.aclose()
        raise
    factory = ChunkFactory(
        execution_id=created.execution_id, model=chat.model, include_usage=chat.include_usage
    )
    response = StreamingHttpResponse(_body(reader, factory, held), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each chunk through now
    response["X-Execution-Id"] = created.execution_id
    reader.close_when_done(asyncio.current_task())
    return response


async def _body(reader: EventReader, factory: ChunkFactory, held: list[Any]) -> AsyncIterator[bytes]:
    queued = deque(held)
    interval = ping_seconds()
    sent_text = False
    try:
        yield sse(factory.role())
        while True:
            event = queued.popleft() if queued else await reader.next(interval)
            if event is _TIMEOUT:
                yield PING
            elif event is _END:
                raise RuntimeError("the engine's stream ended without a terminal event")
            elif isinstance(event, OutputDelta):
                if event.text:
                    sent_text = True
                    yield sse(factory.content(event.text))
            elif isinstance(event, ExecutionCompleted):
                # An answer that arrived without deltas is still the answer: send it whole.
                text = "" if sent_text else output_text(event.result.output)
                if text:
                    yield sse(factory.content(text))
                # Calls to the client's own tools: as OpenAI streams them, before the finish chunk.
                for chunk in factory.tool_calls(client_tool_calls(event.result)):
                    yield sse(chunk)
                yield sse(factory.finish(event.result))
                if factory.include_usage:
                    yield sse(factory.usage(event.result))
                yield DONE
                await reader.finish()
                return
            elif isinstance(event, ExecutionFailed | ExecutionCancelled):
                yield sse(run_failure(event.result, factory.execution_id).body())
                await reader.finish()
                return
            # Tool calls and platform fallbacks are the agent's own business: not part of OpenAI's stream.
    except Exception:
        logger.exception("chat completion stream failed")
        yield sse(SERVER_ERROR.body())
    finally:
        await reader.aclose()
