"""Native server-sent events: a renderer over a run stream (apps/agents/services/run_stream.py).

Each event is `id:` (its number in the run: 1, 2, 3...), `event:` (apps/agents/engine/events.py) and `data:`
(JSON); a `: ping` comment every SSE_PING_SECONDS keeps proxies from closing an idle stream. Reading with
pings, and cancelling the run when the client leaves, are the stream's job: when the client disconnects,
Django's ASGI handler cancels the request task, and the body's `finally` closes the stream (or, if the body
was never iterated, the request task's end does). This needs ASGI (uvicorn), where the request task lives
until the body is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

from apps.agents.engine.run_stream import PING, RunStream

logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
PING_FRAME = b": ping\n\n"

SERVER_ERROR_DATA = {"error": {"code": "server_error", "message": "Internal server error."}}


def wants_event_stream(request: HttpRequest) -> bool:
    return EVENT_STREAM in request.headers.get("Accept", "")


def frame(seq: int, name: str, data: Mapping[str, Any]) -> bytes:
    # JSON never contains a raw newline, so `data:` is one line. Lone surrogates in model text become U+FFFD
    # instead of breaking the encoder mid-stream.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {seq}\nevent: {name}\ndata: {payload}\n\n".encode("utf-8", "replace")


async def _frames(stream: RunStream, interval: float) -> AsyncIterator[bytes]:
    seq = 0
    try:
        while True:
            try:
                item = await stream.read(interval)
            except Exception:
                logger.exception("event stream failed")
                yield frame(seq + 1, "execution.failed", SERVER_ERROR_DATA)
                return
            if item is None:
                return
            if item is PING:
                yield PING_FRAME
                continue
            seq = item.seq  # type: ignore[union-attr]
            yield frame(seq, item.name, item.data)  # type: ignore[union-attr]
    finally:
        await stream.aclose()


def event_stream(stream: RunStream) -> StreamingHttpResponse:
    """Answer with the events of `stream`; the response owns it (closes it when the client is gone)."""
    stream.close_when_done(asyncio.current_task())
    return event_stream_response(_frames(stream, float(settings.SSE_PING_SECONDS)))


def event_stream_response(
    body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
) -> StreamingHttpResponse:
    """The headers every event stream has (native and OpenAI's)."""
    response = StreamingHttpResponse(body, content_type=EVENT_STREAM)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event through now, not when a buffer fills
    for name, value in (headers or {}).items():
        response[name] = value
    return response


__all__ = [
    "EVENT_STREAM",
    "PING_FRAME",
    "event_stream",
    "event_stream_response",
    "frame",
    "wants_event_stream",
]
