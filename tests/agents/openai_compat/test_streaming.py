"""The SSE translation on its own, over a run stream of scripted events standing in for the engine (the live
tests in test_chat_completions.py cover the real engine): framing, early failures, and that every way of
leaving closes the engine's stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from apps.agents.engine.context import AgentError, AgentResult
from apps.agents.engine.events import (
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
    PlatformFallback,
)
from apps.agents.engine.run_stream import RunStream
from apps.agents.openai_compat.schemas import parse_chat_request
from apps.agents.openai_compat.streaming import stream_chat

CHAT = parse_chat_request(
    {
        "model": "greeter",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi"}],
    },
    max_messages=10,
    max_chars=100,
)


class Script:
    """An engine-like stream: yields `events`, then waits forever if `hang`; remembers how it ended."""

    def __init__(self, *events: Any, hang: bool = False) -> None:
        self.events = events
        self.hang = hang
        self.ended: str | None = None

    async def stream(self) -> AsyncIterator[Any]:
        try:
            for event in self.events:
                yield event
            if self.hang:
                await asyncio.Event().wait()
            self.ended = "finished"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


def done(output: Any, **extra: Any) -> ExecutionCompleted:
    result = AgentResult(
        success=True, output=output, input_tokens=3, output_tokens=4, execution_id="e1", **extra
    )
    return ExecutionCompleted(result)


async def body_of(response: Any) -> list[Any]:
    frames = [frame async for frame in response.streaming_content]
    lines = b"".join(frames).decode().split("\n\n")
    return [json.loads(x[6:]) if x.startswith("data: {") else x for x in lines if x]


async def test_frames_role_content_finish_usage_done_and_nothing_of_the_agents_internals():
    script = Script(
        ExecutionCreated("e1", "greeter"),
        PlatformFallback("openai", "anthropic", "server_error 500"),
        OutputDelta("Hel"),
        OutputDelta("lo"),
        done("Hello", metadata={"finish_reason": "length"}),
    )
    response = await stream_chat(RunStream.over(script.stream()), CHAT)

    frames = await body_of(response)
    assert response["Content-Type"] == "text/event-stream" and response["X-Execution-Id"] == "e1"
    assert frames[-1] == "data: [DONE]"
    chunks = frames[:-1]
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
    ]
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 7
    assert len(chunks) == 5  # the fallback event is not part of OpenAI's stream
    assert script.ended == "finished"


async def test_an_answer_that_came_without_deltas_is_sent_whole():
    script = Script(ExecutionCreated("e1", "greeter"), done({"answer": 42}))
    chunks = (await body_of(await stream_chat(RunStream.over(script.stream()), CHAT)))[:-1]
    assert chunks[1]["choices"][0]["delta"] == {"content": '{"answer": 42}'}


async def test_a_failure_before_any_text_is_an_http_error_not_a_stream():
    failure = AgentResult(success=False, error=AgentError("timeout", "too slow"), execution_id="e1")
    script = Script(ExecutionCreated("e1", "greeter"), ExecutionFailed(failure.error, failure))

    response = await stream_chat(RunStream.over(script.stream()), CHAT)

    assert response.status_code == 504 and response["x-should-retry"] == "false"
    assert json.loads(response.content)["error"]["code"] == "timeout"


async def test_a_failure_after_text_is_an_error_event_without_done():
    failure = AgentResult(success=False, error=AgentError("provider_error", "cut"), execution_id="e1")
    script = Script(
        ExecutionCreated("e1", "greeter"), OutputDelta("Hi"), ExecutionFailed(failure.error, failure)
    )
    frames = await body_of(await stream_chat(RunStream.over(script.stream()), CHAT))
    assert frames[-1]["error"]["code"] == "provider_error" and "data: [DONE]" not in frames


async def test_leaving_mid_stream_cancels_the_engines_stream():
    script = Script(ExecutionCreated("e1", "greeter"), OutputDelta("Hi"), hang=True)
    response = await stream_chat(RunStream.over(script.stream()), CHAT)
    body = response.streaming_content
    await anext(body)  # role
    await anext(body)  # "Hi"
    reading = asyncio.ensure_future(anext(body))  # waiting on the engine
    await asyncio.sleep(0.05)
    reading.cancel()  # what Django does to the request task when the client disconnects
    await asyncio.wait([reading])
    assert script.ended == "cancelled"


async def test_a_response_never_iterated_still_closes_the_run_when_the_request_ends():
    script = Script(ExecutionCreated("e1", "greeter"), OutputDelta("Hi"), hang=True)

    async def request() -> None:
        await stream_chat(RunStream.over(script.stream()), CHAT)  # the client left before the body was sent

    await asyncio.create_task(request())
    for _ in range(100):
        if script.ended:
            break
        await asyncio.sleep(0.01)
    assert script.ended in ("cancelled", "closed")
