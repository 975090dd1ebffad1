"""Server-sent events for a run: `id:` (1, 2, 3...), `event:` (apps/agents/engine/events.py), `data:` (JSON),
and a `: ping` comment every SSE_PING_SECONDS (default 15) so proxies keep an idle stream open.

The engine's stream runs in its own task (`EventPump`) and hands events over a queue. That lets the response
send pings while the engine waits on a provider without ever cancelling the engine's `__anext__` (cancelling
it would end the run), and keeps the whole run in one task, so its `asyncio.timeout` and context variables
behave. This needs ASGI (uvicorn), where the request task lives until the body is sent. When the client
disconnects, Django's ASGI handler cancels the request task; the response generator's
`finally` then cancels the pump task, which throws CancelledError into the engine's stream: the engine closes
the upstream request and records the execution `cancelled`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
PING = b": ping\n\n"
DEFAULT_PING_SECONDS = 15.0
# How long a cancelled run may take to record itself before the response gives up waiting for it.
CANCEL_GRACE_SECONDS = 10.0

SERVER_ERROR_DATA = {"error": {"code": "server_error", "message": "Internal server error."}}


def wants_event_stream(request: HttpRequest) -> bool:
    return EVENT_STREAM in request.headers.get("Accept", "")


def ping_interval() -> float:
    return float(getattr(settings, "SSE_PING_SECONDS", DEFAULT_PING_SECONDS))


def frame(seq: int, name: str, data: Mapping[str, Any]) -> bytes:
    # JSON never contains a raw newline, so `data:` is one line. Lone surrogates in model text become U+FFFD
    # instead of breaking the encoder mid-stream.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {seq}\nevent: {name}\ndata: {payload}\n\n".encode("utf-8", "replace")


class _End:
    pass


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class EventPump:
    """Runs an async iterator of stream events in its own task; see the module docstring for why."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self._events = events
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="sse-event-pump")
        # Safety net: if the response is never iterated (the client left between headers and body), the
        # request task still ends, and so must the run.
        request_task = asyncio.current_task()
        if request_task is not None:
            request_task.add_done_callback(lambda _: self._task.cancel())

    async def _run(self) -> None:
        try:
            async for event in self._events:
                self._queue.put_nowait(event)
        except Exception as exc:
            self._queue.put_nowait(_Raised(exc))
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
            self._queue.put_nowait(_End())

    async def next(self, wait: float | None = None) -> Any:
        """The next event; `_End()` when the stream is over; raises TimeoutError after `wait` seconds."""
        item = await asyncio.wait_for(self._queue.get(), wait)
        if isinstance(item, _Raised):
            raise item.exc
        return item

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            # asyncio.wait, not `await task`: waits for the run to record itself without re-raising its
            # CancelledError here (the caller may be finishing normally).
            await asyncio.wait([self._task], timeout=CANCEL_GRACE_SECONDS)


def _parts(event: Any, next_seq: int) -> tuple[int, str, Mapping[str, Any]]:
    """(id, event name, data) of an engine StreamEvent (numbered here, in order) or of an events-bus event
    (numbered by the run that published it, so that Last-Event-ID resumes across servers)."""
    seq = getattr(event, "seq", None)
    if seq is not None:
        return seq, event.name, event.data
    return next_seq, event.name, event.data()


async def _frames(pump: EventPump, first: Any, interval: float) -> AsyncIterator[bytes]:
    seq = 0
    try:
        if first is not None:
            seq, name, data = _parts(first, seq + 1)
            yield frame(seq, name, data)
        while True:
            try:
                event = await pump.next(wait=interval)
            except TimeoutError:
                yield PING
                continue
            except Exception:
                logger.exception("event stream failed")
                yield frame(seq + 1, "execution.failed", SERVER_ERROR_DATA)
                return
            if isinstance(event, _End):
                return
            seq, name, data = _parts(event, seq + 1)
            yield frame(seq, name, data)
    finally:
        await pump.aclose()


async def open_event_stream(
    events: AsyncIterator[Any], *, wait_for_first: bool = True
) -> StreamingHttpResponse:
    """Answer with the events of `events`.

    `wait_for_first`: start the run and wait for its first event before answering, so that a refusal
    (inactive agent, someone else's conversation, a reused Idempotency-Key) is still an ordinary JSON error
    with a 4xx status rather than a 200 stream. Off for following a queued run, which may wait for a worker.
    """
    pump = EventPump(events)
    first = None
    if wait_for_first:
        try:
            first = await pump.next()
        except BaseException:
            await pump.aclose()
            raise
        if isinstance(first, _End):
            raise RuntimeError("the event stream ended before its first event")
    return event_stream_response(_frames(pump, first, ping_interval()))


def event_stream_response(frames: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(frames, content_type=EVENT_STREAM)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event through now, not when a buffer fills
    return response


__all__ = [
    "EVENT_STREAM",
    "EventPump",
    "event_stream_response",
    "frame",
    "open_event_stream",
    "wants_event_stream",
]
