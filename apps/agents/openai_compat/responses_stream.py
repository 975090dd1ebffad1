"""`POST /v1/responses` with `stream: true`: the engine's events rendered as typed `response.*` SSE events
(`event: <type>` + `data: <json>`), read from the run stream with the chat stream's helpers (streaming.py).

Unlike a chat stream, nothing is held back: the Responses API reports a failed run in-band
(`response.failed`), which the SDKs surface as such, so the 200 is committed as soon as the row exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpResponseBase

from apps.agents.api.sse import PING_FRAME, event_stream_response
from apps.agents.engine.events import ExecutionCancelled, ExecutionCompleted, ExecutionFailed, OutputDelta
from apps.agents.engine.run_stream import PING, RunStream
from apps.agents.openai_compat.responses_render import EventFactory, ResponseEcho
from apps.agents.openai_compat.streaming import first_event, run_events, sse

logger = logging.getLogger(__name__)


def _all(events: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[bytes]:
    return (sse(data, event=kind) for kind, data in events)


async def stream_response(stream: RunStream, echo: ResponseEcho) -> HttpResponseBase:
    """Answer with the typed `response.*` events of the run behind `stream` (a renderer over the run stream,
    like the chat chunks). The response owns `stream`: it is closed when the response ends or the client
    leaves."""
    created = await first_event(stream)
    factory = EventFactory(execution_id=created.execution_id, echo=echo)
    stream.close_when_done(asyncio.current_task())
    return event_stream_response(_body(stream, factory), headers={"X-Execution-Id": created.execution_id})


async def _body(stream: RunStream, factory: EventFactory) -> AsyncIterator[bytes]:
    sent_text = False
    try:
        for chunk in _all(factory.start()):
            yield chunk
        async for event in run_events(stream):
            if event is PING:
                yield PING_FRAME
            elif isinstance(event, OutputDelta):
                if event.text:
                    sent_text = True
                    for chunk in _all(factory.delta(event.text)):
                        yield chunk
            elif isinstance(event, ExecutionCompleted):
                for chunk in _all(factory.complete(event.result, sent_text)):
                    yield chunk
            elif isinstance(event, ExecutionFailed | ExecutionCancelled):
                for chunk in _all(factory.failed(event.result)):
                    yield chunk
    except Exception:
        logger.exception("response stream failed")
        for chunk in _all(factory.failed(None)):
            yield chunk
    finally:
        await stream.aclose()
