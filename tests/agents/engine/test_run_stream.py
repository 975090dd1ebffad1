"""RunStream on its own: numbering, reads with pings that never cancel the run, and closing."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest

from apps.agents.engine.context import AgentResult
from apps.agents.engine.events import ExecutionCompleted, ExecutionCreated, OutputDelta
from apps.agents.engine.run_stream import PING, Numbered, RunStream


class BusEvent(NamedTuple):  # the shape of an event read back from the events bus
    seq: int
    name: str
    data: dict[str, Any]


def done() -> ExecutionCompleted:
    return ExecutionCompleted(AgentResult(success=True, output="hi"))


class Run:
    """A source that emits `before`, waits for `go`, then finishes; records how it ended."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.ended: str | None = None

    async def __call__(self, stream: RunStream) -> str:
        try:
            await stream.emit(ExecutionCreated("e1", "greeter"))
            await stream.emit(OutputDelta("He"))
            await self.go.wait()
            await stream.emit(OutputDelta("llo"))
            stream.push(done())
            self.ended = "finished"
            return "result"
        except asyncio.CancelledError:
            # What the services' source does: record the run cancelled, then let the cancellation go on.
            self.ended = "cancelled"
            raise


async def test_events_are_numbered_in_order_and_the_stream_ends_after_the_last():
    run = Run()
    stream = RunStream.start(run)
    run.go.set()
    items = []
    while (item := await stream.read()) is not None:
        items.append(item)
    assert [(i.seq, i.name) for i in items] == [
        (1, "execution.created"),
        (2, "output.delta"),
        (3, "output.delta"),
        (4, "execution.completed"),
    ]
    assert items[1].data == {"text": "He"}
    assert await stream.read() is None  # the end stays the end
    assert await stream.result() == "result"


async def test_a_read_that_times_out_is_a_ping_and_the_run_goes_on():
    run = Run()
    stream = RunStream.start(run)
    assert (await stream.read(0.01)).name == "execution.created"
    assert (await stream.read(0.01)).name == "output.delta"
    assert await stream.read(0.01) is PING
    assert await stream.read(0.01) is PING
    assert run.ended is None
    run.go.set()
    assert (await stream.read(1)).data == {"text": "llo"}
    await stream.aclose()
    assert run.ended == "finished"


async def test_closing_before_the_end_cancels_the_run_and_waits_for_it():
    run = Run()
    stream = RunStream.start(run)
    await stream.read()
    await stream.aclose()
    assert run.ended == "cancelled"
    await stream.aclose()  # idempotent


async def test_closing_at_once_still_lets_the_source_see_its_cancellation():
    # A task cancelled before its first step would never run a line of its source (which records the run).
    run = Run()
    stream = RunStream.start(run)
    await stream.aclose()
    assert run.ended == "cancelled"


async def test_closing_after_the_terminal_event_does_not_cancel():
    async def source(stream: RunStream) -> None:
        stream.push(done())
        await asyncio.sleep(0)  # still finishing when the reader leaves
        source.finished = True  # type: ignore[attr-defined]

    stream = RunStream.start(source)
    assert (await stream.read()).name == "execution.completed"
    await stream.aclose()
    assert source.finished  # type: ignore[attr-defined]


async def test_a_cancel_request_carries_its_reason_and_result_returns_the_outcome():
    async def source(stream: RunStream) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stream.outcome = AgentResult(success=False, output=stream.cancel_reason)
            raise

    stream = RunStream.start(source)
    await asyncio.sleep(0)
    stream.cancel("cancelled by request")
    assert (await stream.result()).output == "cancelled by request"


async def test_an_error_of_the_source_is_raised_after_what_it_queued():
    async def source(stream: RunStream) -> None:
        await stream.emit(OutputDelta("partial"))
        raise RuntimeError("boom")

    stream = RunStream.start(source)
    assert (await stream.read()).data == {"text": "partial"}
    with pytest.raises(RuntimeError, match="boom"):
        await stream.read()


async def test_over_numbers_engine_events_and_keeps_the_seq_of_bus_events():
    async def events():
        yield ExecutionCreated("e1", "greeter")
        yield BusEvent(7, "output.delta", {"text": "x"})
        yield Numbered(9, OutputDelta("y"))

    stream = RunStream.over(events())
    seqs = []
    while (item := await stream.read()) is not None:
        seqs.append(item.seq)
    assert seqs == [1, 7, 9]


async def test_a_stream_never_read_is_closed_when_its_request_ends():
    run = Run()

    async def request() -> None:
        stream = RunStream.start(run)
        stream.close_when_done(asyncio.current_task())

    await asyncio.create_task(request())
    for _ in range(100):
        if run.ended:
            break
        await asyncio.sleep(0.01)
    assert run.ended == "cancelled"
