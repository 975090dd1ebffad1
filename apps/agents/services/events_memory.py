"""The in-process events bus (no Redis configured, the embedded `make run`); see events_bus.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from apps.agents.services.events_bus import BusEvent, EventBus, EventReader


@dataclass
class _Stream:
    events: list[BusEvent] = field(default_factory=list)
    touched: float = field(default_factory=time.monotonic)
    waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)


class InProcessEventBus(EventBus):
    """For runs executed in this process (no Redis). Publishers and readers may live on different event
    loops (the in-process runner has its own thread), so waiters are woken with call_soon_threadsafe."""

    MAX_STREAMS = 10_000

    def __init__(self, *, ttl_seconds: int) -> None:
        self.ttl = ttl_seconds
        self._lock = threading.Lock()
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def _evict(self, now: float) -> None:
        while self._streams:
            oldest_id, oldest = next(iter(self._streams.items()))
            if len(self._streams) <= self.MAX_STREAMS and now - oldest.touched < self.ttl:
                break
            del self._streams[oldest_id]

    def publish_sync(self, execution_id: str, event: BusEvent) -> bool:
        now = time.monotonic()
        with self._lock:
            stream = self._streams.pop(execution_id, None) or _Stream()
            self._streams[execution_id] = stream  # most recently touched last, for eviction
            if stream.events and event.seq <= stream.events[-1].seq:
                return False
            stream.events.append(event)
            stream.touched = now
            waiters = list(stream.waiters)
            self._evict(now)
        for loop, ready in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its reader is gone
                loop.call_soon_threadsafe(ready.set)
        return True

    async def publish(self, execution_id: str, event: BusEvent) -> bool:
        return self.publish_sync(execution_id, event)

    def last_seq_sync(self, execution_id: str) -> int:
        with self._lock:
            stream = self._streams.get(execution_id)
            return stream.events[-1].seq if stream and stream.events else -1

    def _after(self, execution_id: str, after_seq: int) -> list[BusEvent]:
        with self._lock:
            stream = self._streams.get(execution_id)
            return [e for e in stream.events if e.seq > after_seq] if stream else []

    async def _wait(self, execution_id: str, after_seq: int, wait: float) -> list[BusEvent]:
        events = self._after(execution_id, after_seq)
        if events or wait <= 0:
            return events
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            stream = self._streams.setdefault(execution_id, _Stream())
            stream.waiters.add(waiter)
        try:
            events = self._after(execution_id, after_seq)  # published between the check and registering
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), wait)
                events = self._after(execution_id, after_seq)
        finally:
            with self._lock:
                stream.waiters.discard(waiter)
        return events

    def reader(self, execution_id: str) -> EventReader:
        bus = self

        class _Reader(EventReader):
            async def read(self, after_seq: int, wait: float) -> list[BusEvent]:
                return await bus._wait(execution_id, after_seq, wait)

        return _Reader()
