"""One unit test (or a few) per renderer of a run stream, over scripted streams (no engine, no database):
native SSE (api/sse.py), the terminal (run_agent), the events bus publisher (services/run_stream.relay).
The OpenAI chunk renderer has its own: tests/agents/openai_compat/test_streaming.py. The live tests
(tests/agents/api/test_sse.py, test_run_agent.py, tests/agents/background) cover them over the real engine."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

from django.test import override_settings

from apps.agents.api.sse import event_stream
from apps.agents.engine.context import AgentError, AgentResult
from apps.agents.engine.events import (
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
    PlatformFallback,
    ToolCallEvent,
)
from apps.agents.engine.run_stream import RunStream
from apps.agents.management.commands.run_agent import Command
from apps.agents.services.events_bus import BusEvent
from apps.agents.services.run_stream import relay

CREATED = ExecutionCreated("5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e", "greeter")
RESULT = AgentResult(success=True, output="Hello", input_tokens=3, output_tokens=4, execution_id="e1")


async def scripted(*events: Any, hang: bool = False, ended: list[str] | None = None) -> AsyncIterator[Any]:
    try:
        for event in events:
            yield event
        if hang:
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        if ended is not None:
            ended.append("cancelled")
        raise


async def body(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


# ---------------------------------------------------------------------------- native SSE
async def test_sse_frames_have_the_runs_numbers_names_and_json():
    stream = RunStream.over(scripted(CREATED, OutputDelta("Hé"), ExecutionCompleted(RESULT)))
    response = event_stream(stream)
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    text = (await body(response)).decode()
    frames = text.split("\n\n")[:-1]
    assert frames[0] == (
        'id: 1\nevent: execution.created\ndata: {"execution_id":"5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e",'
        '"agent_id":"greeter"}'
    )
    assert frames[1] == 'id: 2\nevent: output.delta\ndata: {"text":"Hé"}'
    assert frames[2].startswith('id: 3\nevent: execution.completed\ndata: {"success":true,"output":"Hello"')
    assert len(frames) == 3


async def test_sse_keeps_the_numbers_of_published_events_and_pings_while_idle():
    async def published() -> AsyncIterator[BusEvent]:
        yield BusEvent(5, "output.delta", {"text": "a"})
        await asyncio.sleep(0.05)
        yield BusEvent(6, "execution.cancelled", {})

    with override_settings(SSE_PING_SECONDS=0.01):
        response = event_stream(RunStream.over(published()))
    text = (await body(response)).decode()
    assert text.startswith('id: 5\nevent: output.delta\ndata: {"text":"a"}\n\n: ping\n\n')
    assert text.endswith("id: 6\nevent: execution.cancelled\ndata: {}\n\n")


async def test_sse_a_stream_that_breaks_ends_with_a_server_error_event():
    async def broken() -> AsyncIterator[Any]:
        yield CREATED
        raise RuntimeError("database gone")

    text = (await body(event_stream(RunStream.over(broken())))).decode()
    assert text.endswith(
        'id: 2\nevent: execution.failed\ndata: {"error":{"code":"server_error","message":"Internal server error."}}\n\n'
    )
    assert "database gone" not in text


async def test_sse_a_client_that_leaves_closes_the_stream_and_so_cancels_the_run():
    ended: list[str] = []
    response = event_stream(RunStream.over(scripted(CREATED, hang=True, ended=ended)))
    frames = response.streaming_content
    await anext(frames)
    reading = asyncio.ensure_future(anext(frames))
    await asyncio.sleep(0.02)
    reading.cancel()  # what Django's ASGI handler does when the client disconnects
    await asyncio.wait([reading])
    assert ended == ["cancelled"]


# ---------------------------------------------------------------------------- the terminal (run_agent)
def command() -> tuple[Command, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    cmd = Command(stdout=out, stderr=err, no_color=True)
    cmd.as_json = False
    return cmd, out, err


async def test_cli_prints_the_text_as_it_comes_and_notes_on_stderr():
    cmd, out, err = command()
    stream = RunStream.over(
        scripted(
            CREATED,
            PlatformFallback("openai", "anthropic", "server_error 500"),
            ToolCallEvent("c1", "add", {"a": 1}),
            OutputDelta("Hel"),
            OutputDelta("lo"),
            ExecutionCompleted(RESULT),
        )
    )
    result = await cmd._consume(stream)
    assert result is RESULT
    assert out.getvalue() == "Hello\n"  # the streamed text, then its line ended before the summary
    assert "falling back from openai to anthropic: server_error 500" in err.getvalue()
    assert 'tool call add({"a": 1})' in err.getvalue()
    assert stream.closed


async def test_cli_json_mode_prints_nothing_while_streaming_and_returns_the_failure():
    cmd, out, _ = command()
    cmd.as_json = True
    failed = AgentResult(success=False, error=AgentError("timeout", "too slow"))
    result = await cmd._consume(
        RunStream.over(scripted(CREATED, OutputDelta("x"), ExecutionFailed(failed.error, failed)))
    )
    assert result.error == AgentError("timeout", "too slow")
    assert out.getvalue() == ""


# ---------------------------------------------------------------------------- the events bus publisher
async def test_relay_publishes_every_event_with_its_number_and_survives_a_failed_publish():
    published: list[tuple[int, str]] = []

    async def publish(seq: int, event: Any) -> None:
        if seq == 2:
            raise ConnectionError("bus down")
        published.append((seq, event.name))

    await relay(RunStream.over(scripted(CREATED, OutputDelta("a"), ExecutionCompleted(RESULT))), publish)
    assert published == [(1, "execution.created"), (3, "execution.completed")]
