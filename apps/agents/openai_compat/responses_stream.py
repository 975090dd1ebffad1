"""`POST /v1/responses` with `stream: true`: the engine's events rendered as typed `response.*` SSE events
(`event: <type>` + `data: <json>`), read through the same EventReader as the chat stream (streaming.py).

Unlike a chat stream, nothing is held back: the Responses API reports a failed run in-band
(`response.failed`), which the SDKs surface as such, so the 200 is committed as soon as the row exists.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse

from apps.agents.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
)
from apps.agents.openai_compat.responses_render import EventFactory, ResponseEcho
from apps.agents.openai_compat.streaming import _END, _TIMEOUT, PING, EventReader, ping_seconds

logger = logging.getLogger(__name__)


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode("utf-8", "replace")


def _all(events: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[bytes]:
    return (sse_event(kind, data) for kind, data in events)


async def stream_response(events: AsyncIterator[Any], echo: ResponseEcho) -> HttpResponseBase:
    """Start the run (bad input raises ApplicationError from the first read, before any row exists), then
    answer with the event stream."""
    reader = EventReader(events)
    try:
        created = await reader.next()
        if not isinstance(created, ExecutionCreated):
            raise RuntimeError(f"the engine's stream began with {created!r}")
    except BaseException:
        await reader.aclose()
        raise
    factory = EventFactory(execution_id=created.execution_id, echo=echo)
    response = StreamingHttpResponse(_body(reader, factory), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-Execution-Id"] = created.execution_id
    reader.close_when_done(asyncio.current_task())
    return response


async def _body(reader: EventReader, factory: EventFactory) -> AsyncIterator[bytes]:
    interval = ping_seconds()
    sent_text = False
    try:
        for chunk in _all(factory.start()):
            yield chunk
        while True:
            event = await reader.next(interval)
            if event is _TIMEOUT:
                yield PING
            elif event is _END:
                raise RuntimeError("the engine's stream ended without a terminal event")
            elif isinstance(event, OutputDelta):
                if event.text:
                    sent_text = True
                    for chunk in _all(factory.delta(event.text)):
                        yield chunk
            elif isinstance(event, ExecutionCompleted):
                for chunk in _all(factory.complete(event.result, sent_text)):
                    yield chunk
                await reader.finish()
                return
            elif isinstance(event, ExecutionFailed | ExecutionCancelled):
                for chunk in _all(factory.failed(event.result)):
                    yield chunk
                await reader.finish()
                return
    except Exception:
        logger.exception("response stream failed")
        for chunk in _all(factory.failed(None)):
            yield chunk
    finally:
        await reader.aclose()
