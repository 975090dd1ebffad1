"""The events of background runs, readable from any API server (GET /api/v1/executions/{id}/events/).

A run publishes every stream event with its sequence number; readers ask for "everything after seq N", so a
client that reconnects with `Last-Event-ID: N` resumes without gaps or duplicates, and one that connects
after the end still gets the whole record, terminal event last.

Two backends with one interface:
- Redis (REDIS_URL, else a redis:// broker URL): one Redis Stream per execution. The entry id is derived from
  the seq (`<seq>-1`), so "after seq N" is an exact XREAD position and a second publish of the same seq is
  refused by Redis itself (no duplicates even if two processes publish). The key expires EVENTS_TTL_SECONDS
  after the last event.
- In-process (no Redis configured, the embedded `make run`): the same thing in a dict, for runs executed in
  this very process (events_memory.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.utils import timezone

from apps.agents.models import TERMINAL_STATUSES, AgentExecution, ExecutionMode
from apps.agents.services.db import afirst
from apps.agents.services.execution_records import terminal_event_from_row

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})


class BusEvent(NamedTuple):
    seq: int
    name: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS


class EventBus(ABC):
    """Where runs publish their events. Publishing never raises: a run must not fail because its audience
    cannot be reached (readers fall back to the database row for the outcome)."""

    @abstractmethod
    async def publish(self, execution_id: str, event: BusEvent) -> bool:
        """Append `event`; False if it was not stored (a duplicate or older seq, or the bus is down)."""

    @abstractmethod
    def publish_sync(self, execution_id: str, event: BusEvent) -> bool:
        """The same from synchronous code (the reaper, a cancel of a queued run)."""

    @abstractmethod
    def reader(self, execution_id: str) -> EventReader:
        """A reader for one execution; close it with `aclose()` (it may hold a connection)."""

    @abstractmethod
    def last_seq_sync(self, execution_id: str) -> int:
        """The highest seq stored for the execution, -1 if none."""

    def publisher(self, execution_id: str) -> EventPublisher:
        """A publisher for one run, on the current event loop; close it with `aclose()`."""
        return EventPublisher(self, execution_id)


class EventPublisher:
    """Publishes one run's events. The base one delegates to the bus; Redis keeps one connection open."""

    def __init__(self, bus: EventBus, execution_id: str) -> None:
        self.bus = bus
        self.execution_id = execution_id

    async def publish(self, event: BusEvent) -> bool:
        return await self.bus.publish(self.execution_id, event)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> EventPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EventReader(ABC):
    @abstractmethod
    async def read(self, after_seq: int, wait: float) -> list[BusEvent]:
        """Events with seq > after_seq, in order; waits up to `wait` seconds for the first one."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


# --------------------------------------------------------------------------- Redis


def _entry_id(seq: int) -> str:
    # Stream ids are "<ms>-<n>" and must be above 0-0; "<seq>-1" keeps seq 0 valid and makes the id of
    # "right after seq N" simply "N-1" (XREAD returns ids strictly greater than the one given).
    return f"{seq}-1"


def _decode(entry_id: Any, fields: Mapping[Any, Any]) -> BusEvent:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    values = {text(k): text(v) for k, v in fields.items()}
    return BusEvent(int(values["seq"]), values["event"], json.loads(values["data"]))


class RedisEventBus(EventBus):
    def __init__(self, url: str, *, prefix: str, ttl_seconds: int) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.ttl = ttl_seconds
        # One synchronous client (a thread-safe connection pool) per process, for every write. Readers use an
        # async client of their own: XREAD BLOCK holds a connection while it waits.
        self._sync = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def key(self, execution_id: str) -> str:
        return f"{self.prefix}events:{execution_id}"

    @staticmethod
    def _fields(event: BusEvent) -> dict[str, str]:
        return {"seq": str(event.seq), "event": event.name, "data": json.dumps(event.data, default=str)}

    def _report(self, execution_id: str, event: BusEvent, results: list[Any]) -> bool:
        error = results[0] if isinstance(results[0], Exception) else None
        if error is None:
            return True
        if "equal or smaller" in str(error):
            logger.debug("events: seq %s of %s already published", event.seq, execution_id)
        else:
            logger.warning("events: could not publish seq %s of %s: %s", event.seq, execution_id, error)
        return False

    async def publish(self, execution_id: str, event: BusEvent) -> bool:
        return await asyncio.to_thread(self.publish_sync, execution_id, event)

    def publish_sync(self, execution_id: str, event: BusEvent) -> bool:
        return self.publish_batch_sync(execution_id, [event]) == 1

    def last_seq_sync(self, execution_id: str) -> int:
        try:
            entries = self._sync.xrevrange(self.key(execution_id), count=1)
        except Exception as exc:
            logger.warning("events: Redis unavailable reading %s: %s", execution_id, exc)
            return -1
        return _decode(*entries[0]).seq if entries else -1

    def reader(self, execution_id: str) -> EventReader:
        return RedisEventReader(self, execution_id)

    def publisher(self, execution_id: str) -> BatchingRedisPublisher:
        return BatchingRedisPublisher(self, execution_id)

    def publish_batch_sync(self, execution_id: str, events: list[BusEvent]) -> int:
        """Append several events in one round trip; returns how many were stored."""
        key = self.key(execution_id)
        try:
            pipe = self._sync.pipeline(transaction=False)
            for event in events:
                pipe.xadd(key, self._fields(event), id=_entry_id(event.seq))
            pipe.expire(key, self.ttl)
            results = pipe.execute(raise_on_error=False)
        except Exception as exc:  # Redis down: the row in the database still has the outcome.
            logger.warning(
                "events: Redis down, %d events of %s not published: %s", len(events), execution_id, exc
            )
            return 0
        return sum(
            self._report(execution_id, event, [result])
            for event, result in zip(events, results, strict=False)
        )


class BatchingRedisPublisher(EventPublisher):
    """Publishes one run's events in order, without making the run wait a round trip per token.

    `publish` queues the event; one flusher task at a time sends whatever is queued as one pipeline on the
    process-wide pooled connection (in a thread: the sync client), so a fast stream costs a few round
    trips instead of one per event, and no run opens a connection of its own. A terminal event (and
    `aclose`) waits until everything queued is stored.
    """

    bus: RedisEventBus

    def __init__(self, bus: RedisEventBus, execution_id: str) -> None:
        super().__init__(bus, execution_id)
        self._queued: list[BusEvent] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, event: BusEvent) -> bool:
        self._queued.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        if event.is_terminal:
            await self.drain()
        return True

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            await asyncio.to_thread(self.bus.publish_batch_sync, self.execution_id, batch)

    async def drain(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def aclose(self) -> None:
        await self.drain()


class RedisEventReader(EventReader):
    def __init__(self, bus: RedisEventBus, execution_id: str) -> None:
        import redis.asyncio

        self.key = bus.key(execution_id)
        # XREAD BLOCK holds its connection while it waits: the socket timeout must be longer than the wait.
        self._client = redis.asyncio.Redis.from_url(bus.url, socket_timeout=30, socket_connect_timeout=5)

    async def read(self, after_seq: int, wait: float) -> list[BusEvent]:
        start = "0-0" if after_seq < 0 else _entry_id(after_seq)
        block = int(wait * 1000) if wait > 0 else None
        reply = await self._client.xread({self.key: start}, count=500, block=block)
        return [_decode(entry_id, fields) for _key, entries in reply or [] for entry_id, fields in entries]

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


# --------------------------------------------------------------------------- the row as the last word

# How long after a background row ended its terminal event may still be on its way (the publish follows
# the database write); past this, the row speaks for it.
PUBLISH_GRACE = timedelta(seconds=3)
_MISSING = BusEvent(-1, "missing", {})


def terminal_event_for(execution: AgentExecution, seq: int) -> BusEvent:
    """The terminal event a finished row stands for, as event `seq`."""
    event = terminal_event_from_row(execution)
    return BusEvent(seq, event.name, event.data())


async def outcome_from_row(execution_id: str, *, next_seq: int) -> BusEvent | None:
    """The outcome from the database when the bus has none; None while the run is live (or just ended)."""
    execution = await afirst(AgentExecution.objects.filter(pk=execution_id))  # polled: a unit of its own
    if execution is None:
        return _MISSING
    if execution.status not in TERMINAL_STATUSES:
        return None
    # Only background runs publish; for the others there is nothing to wait for.
    recent = execution.finished_at and timezone.now() - execution.finished_at < PUBLISH_GRACE
    if execution.mode == ExecutionMode.BACKGROUND and recent:
        return None
    return terminal_event_for(execution, next_seq)


# --------------------------------------------------------------------------- selection

_buses: dict[tuple[str, str, int], EventBus] = {}
_buses_lock = threading.Lock()


def redis_url() -> str:
    """The Redis used for events and cancel notices: REDIS_URL, else the broker if it is Redis."""
    url = settings.REDIS_URL or ""
    broker = settings.CELERY_BROKER_URL or ""
    if not url and broker.startswith(("redis://", "rediss://")):
        url = broker
    return url


def get_bus() -> EventBus:
    """The bus for the current settings (cached per Redis URL and prefix)."""
    url = redis_url()
    key = (url, settings.REDIS_KEY_PREFIX, int(settings.EVENTS_TTL_SECONDS))
    bus = _buses.get(key)
    if bus is None:
        with _buses_lock:
            bus = _buses.get(key)
            if bus is None:
                if url:
                    bus = RedisEventBus(url, prefix=key[1], ttl_seconds=key[2])
                else:
                    from apps.agents.services.events_memory import InProcessEventBus

                    bus = InProcessEventBus(ttl_seconds=key[2])
                _buses[key] = bus
    return bus


async def subscribe(
    execution_id: str, after_seq: int = -1, *, poll_seconds: float = 1.0
) -> AsyncIterator[BusEvent]:
    """Events of one execution with seq > after_seq, ending after the terminal event.

    When the bus has no terminal event for a run that has ended (events expired, a sync run that never
    published, a process that died between its last write and its publish), the outcome is taken from the
    database row, with the next seq. Consumers should read it with `aclosing` (or let it be cancelled).
    """
    reader = get_bus().reader(execution_id)
    last = after_seq
    try:
        wait = 0.0  # first read: whatever is already stored, without waiting
        while True:
            events = await reader.read(last, wait)
            for event in events:
                yield event
                last = event.seq
                if event.is_terminal:
                    return
            if events:
                wait = 0.0 if len(events) >= 500 else poll_seconds
                continue
            fallback = await outcome_from_row(execution_id, next_seq=max(last, 0) + 1)
            if fallback is not None:
                # The row ended a while ago and its terminal event never came; re-read once to close the
                # race with a publish that landed just now.
                late = await reader.read(last, 0)
                for event in late:
                    yield event
                    last = event.seq
                    if event.is_terminal:
                        return
                if fallback.name == "missing":
                    return
                # Runs number their events from 1; a reader without Last-Event-ID asks for those after 0.
                yield fallback._replace(seq=max(last, 0) + 1)
                return
            wait = poll_seconds
    finally:
        await reader.aclose()
