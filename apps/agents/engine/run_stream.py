"""RunStream: the one queue between a run and whoever reads its events.

A RunStream owns the task that produces a run's events (the run itself, a replay from its record, or a
pump over events published elsewhere). That task puts numbered events on one queue; a reader takes them
with `read()`, which can wait "at most N seconds" (to send a keep-alive ping) without ever cancelling the
run, because waiting on the queue is independent of the task that fills it. When the reader goes away,
`aclose()` cancels the task, which closes the upstream request and records the run as cancelled, and waits
up to CANCEL_GRACE_SECONDS for that record to be written.

The producing task is a task of its own (not the reader's): the run's deadline (`asyncio.timeout`) and
context variables must not span the reader's code, and a reader's timeout must not cancel the run.

Pure asyncio: nothing here imports Django. The services layer (apps/agents/services/run_stream.py) starts the
streams of real executions; BaseAgent.execute_streaming uses one for a bare engine run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol

from apps.agents.engine.context import AgentResult
from apps.agents.engine.events import ExecutionCancelled, ExecutionCompleted, ExecutionFailed, StreamEvent

logger = logging.getLogger(__name__)

#: How long a reader that leaves waits for the cancelled run to record itself. ARCHITECTURE.md asks that a
#: cancel closes the upstream request within a second; the database write that follows gets this long.
CANCEL_GRACE_SECONDS: Final = 10.0

TERMINAL = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled)
TERMINAL_NAMES = frozenset(event.name for event in TERMINAL)


class Item(Protocol):
    """What a reader gets: the event's number in its run, its SSE name and its JSON payload."""

    @property
    def seq(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Numbered:
    """An engine event with its number in the run (1 is ExecutionCreated)."""

    seq: int
    event: StreamEvent

    @property
    def name(self) -> str:
        return self.event.name

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data()


class _Ping:
    def __repr__(self) -> str:
        return "PING"


#: What `read(ping_every=...)` returns when nothing came in time: send a keep-alive.
PING: Final = _Ping()
_END: Final = object()

# Tasks started from done-callbacks, kept alive until they finish (asyncio holds only weak references).
_closers: set[asyncio.Task[None]] = set()

Source = Callable[["RunStream"], Coroutine[Any, Any, Any]]


class RunStream:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._seq = 0
        self._task: asyncio.Task[Any] | None = None
        self._started = False
        self._terminal_seen = False
        self.closed = False
        #: Why the run was stopped from outside (a cancel request), for its record; None if it was not.
        self.cancel_reason: str | None = None
        #: The recorded result, set by the source before it sends the terminal event.
        self.outcome: AgentResult | None = None

    # ------------------------------------------------------------------ the producing side
    @classmethod
    def start(cls, source: Source, *, context: contextvars.Context | None = None) -> RunStream:
        """A stream whose events come from `source(stream)`, run now as a task of its own."""
        stream = cls()

        async def body() -> Any:
            stream._started = True
            return await source(stream)

        stream._task = asyncio.create_task(body(), context=context)
        stream._task.add_done_callback(lambda _: stream._queue.put_nowait(_END))
        return stream

    def when_done(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once the producing task has ended."""
        assert self._task is not None
        self._task.add_done_callback(lambda _: callback())

    @classmethod
    def over(cls, events: AsyncIterator[Any]) -> RunStream:
        """A stream of the items of an async iterator (engine events are numbered here; items that carry
        their own `seq`, like events read back from the bus, keep it). Closing it closes the iterator."""

        async def pump(stream: RunStream) -> None:
            try:
                async for event in events:
                    stream.push(event)
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()

        return cls.start(pump)

    def push(self, event: Any) -> None:
        """Queue an event (never blocks: a run must not wait for its reader)."""
        # Engine events have no `seq`; an item that has one (a Numbered, a bus event) keeps its number.
        item = event if isinstance(getattr(event, "seq", None), int) else Numbered(self._seq + 1, event)
        self._seq = item.seq
        self._queue.put_nowait(item)

    async def emit(self, event: StreamEvent) -> None:
        """The engine's `emit` (apps/agents/engine/run.py)."""
        self._queue.put_nowait(Numbered(self._seq + 1, event))
        self._seq += 1

    def cancel(self, reason: str) -> None:
        """Stop the run from outside (a cancel request); `reason` goes on its record."""
        if self._task is not None and not self._task.done():
            self.cancel_reason = self.cancel_reason or reason
            self._cancel_task()

    def _cancel_task(self) -> None:
        assert self._task is not None
        if self._started:
            self._task.cancel()
        else:
            # A task cancelled before its first step never runs a line of its source, so the source could not
            # record the run. Its first step is already scheduled: cancel right after it.
            asyncio.get_running_loop().call_soon(self._task.cancel)

    # ------------------------------------------------------------------ the reading side
    async def read(self, ping_every: float | None = None) -> Item | _Ping | None:
        """The next item; PING when none came within `ping_every` seconds; None after the last one. An error
        of the producing task is raised here, after the items it queued."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                # Cancelling a Queue.get loses nothing: the item stays queued until a get returns it.
                item = await asyncio.wait_for(self._queue.get(), ping_every)
            except TimeoutError:
                return PING
        if item is _END:
            self._queue.put_nowait(_END)  # every later read sees the end too
            assert self._task is not None
            if not self._task.cancelled() and self._task.exception() is not None:
                raise self._task.exception()  # type: ignore[misc]
            return None
        if item.name in TERMINAL_NAMES:
            self._terminal_seen = True
        return item

    async def result(self) -> AgentResult:
        """Wait for the run to end (without reading its events) and return its recorded result. If the
        caller is cancelled meanwhile, so is the run."""
        assert self._task is not None
        try:
            await asyncio.wait([self._task])
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if self.outcome is not None:
            return self.outcome
        return self._task.result()

    async def aclose(self) -> None:
        """The reader is done. A run still going is cancelled (it records itself cancelled); waits for its
        task up to CANCEL_GRACE_SECONDS. Idempotent."""
        if self.closed:
            return
        self.closed = True
        task = self._task
        if task is None or task.done():
            return
        if not self._terminal_seen:
            self._cancel_task()
        # asyncio.wait, not `await task`: waits for the record without re-raising the task's CancelledError
        # here (the reader may be finishing normally).
        await asyncio.wait([task], timeout=CANCEL_GRACE_SECONDS)
        if not task.done():
            logger.warning("a cancelled run did not finish recording within %ss", CANCEL_GRACE_SECONDS)

    def close_when_done(self, task: asyncio.Task[Any] | None) -> None:
        """Safety net: when `task` (the request) ends, close the stream even if its response body was never
        iterated (the client left between the headers and the body)."""
        if task is None:
            return

        def close(_: object) -> None:
            if not self.closed:
                closer = asyncio.get_running_loop().create_task(self.aclose())
                _closers.add(closer)
                closer.add_done_callback(_closers.discard)

        task.add_done_callback(close)


__all__ = ["CANCEL_GRACE_SECONDS", "PING", "TERMINAL", "Item", "Numbered", "RunStream"]
