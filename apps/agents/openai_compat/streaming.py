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

Reading with pings and closing the run when the client leaves are the run stream's job
(apps/agents/engine/run_stream.py): this module only turns its events into chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase

from apps.agents.api.sse import PING_FRAME, event_stream_response
from apps.agents.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
)
from apps.agents.engine.run_stream import PING, RunStream
from apps.agents.openai_compat.errors import OpenAIError, run_failure
from apps.agents.openai_compat.responses import ChunkFactory, client_tool_calls, output_text
from apps.agents.openai_compat.schemas import ChatRequest

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SERVER_ERROR = OpenAIError("The stream failed on the server.", status=500, code="server_error")


def sse(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: `data` as JSON, under `event:` when named (the Responses API's typed events)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {payload}\n\n".encode("utf-8", "replace")


async def next_event(stream: RunStream, wait: float | None = None) -> Any:
    """The next engine event, PING when none came within `wait`, None after the last."""
    item = await stream.read(wait)
    return item if item is None or item is PING else item.event  # type: ignore[union-attr]


async def run_events(stream: RunStream, held: Iterable[Any] = ()) -> AsyncIterator[Any]:
    """The run's events after ExecutionCreated (first those `held` back), with PING after every idle
    SSE_PING_SECONDS; ends after the terminal event, raises RuntimeError if the stream ends without one."""
    queued = deque(held)
    interval = float(settings.SSE_PING_SECONDS)
    while True:
        event = queued.popleft() if queued else await next_event(stream, interval)
        if event is None:
            raise RuntimeError("the engine's stream ended without a terminal event")
        yield event
        if isinstance(event, ExecutionCompleted | ExecutionFailed | ExecutionCancelled):
            return


async def first_event(stream: RunStream) -> ExecutionCreated:
    """The ExecutionCreated every run stream begins with. On anything else, or if the wait is cancelled (the
    client left), `stream` is closed, which cancels the run, and the error propagates."""
    try:
        created = await next_event(stream)
        if not isinstance(created, ExecutionCreated):
            raise RuntimeError(f"the engine's stream began with {created!r}")
    except BaseException:
        await stream.aclose()
        raise
    return created


async def stream_chat(stream: RunStream, chat: ChatRequest) -> HttpResponseBase:
    """Wait for the run's first text (or its early failure), then answer with the chunk stream. The response
    owns `stream`: it is closed when the response ends or the client leaves."""
    created = await first_event(stream)
    held: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        hold_until = loop.time() + float(settings.SSE_PING_SECONDS)
        while True:
            event = await next_event(stream, max(0.0, hold_until - loop.time()))
            if event is PING:
                break
            if event is None:
                raise RuntimeError("the engine's stream ended without a terminal event")
            if isinstance(event, ExecutionFailed | ExecutionCancelled):
                await stream.aclose()
                return run_failure(event.result, created.execution_id).response()
            if isinstance(event, OutputDelta | ExecutionCompleted):
                held.append(event)
                break
    except BaseException:
        await stream.aclose()
        raise
    factory = ChunkFactory(
        execution_id=created.execution_id, model=chat.model, include_usage=chat.include_usage
    )
    stream.close_when_done(asyncio.current_task())
    return event_stream_response(
        _body(stream, factory, held), headers={"X-Execution-Id": created.execution_id}
    )


async def _body(stream: RunStream, factory: ChunkFactory, held: list[Any]) -> AsyncIterator[bytes]:
    sent_text = False
    try:
        yield sse(factory.role())
        async for event in run_events(stream, held):
            if event is PING:
                yield PING_FRAME
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
            elif isinstance(event, ExecutionFailed | ExecutionCancelled):
                yield sse(run_failure(event.result, factory.execution_id).body())
            # Tool calls and platform fallbacks are the agent's own business: not part of OpenAI's stream.
    except Exception:
        logger.exception("chat completion stream failed")
        yield sse(SERVER_ERROR.body())
    finally:
        await stream.aclose()
