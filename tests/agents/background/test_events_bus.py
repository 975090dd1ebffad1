"""The events bus: exact resume after a seq, no duplicates, the end of a run, the row as the last word."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.agents.models import ExecutionMode, ExecutionStatus
from apps.agents.services.events_bus import (
    BusEvent,
    RedisEventBus,
    get_bus,
    subscribe,
)
from apps.agents.services.events_memory import InProcessEventBus
from tests.factories import ExecutionFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["redis", "in_process"])
def bus_kind(request) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_prefix")
    else:
        request.getfixturevalue("no_redis")
    return request.param


def _events(n: int, *, terminal: bool = True) -> list[BusEvent]:
    events = [BusEvent(0, "execution.created", {"execution_id": "x"})]
    events += [BusEvent(i, "output.delta", {"text": f"w{i} "}) for i in range(1, n)]
    if terminal:
        events.append(BusEvent(n, "execution.completed", {"success": True, "output": "done"}))
    return events


async def _collect(execution_id: str, after: int = -1, limit: int | None = None) -> list[BusEvent]:
    got: list[BusEvent] = []
    async with aclosing(subscribe(execution_id, after, poll_seconds=0.2)) as events:
        async for event in events:
            got.append(event)
            if limit is not None and len(got) >= limit:
                break
    return got


def _background_row(**fields):
    if fields.get("status") == ExecutionStatus.RUNNING:
        # Alive, as a running background run is: its worker heartbeats. Without one, any reaper pass in this
        # process (an earlier test's in-process runner reaps periodically) would end it as lost mid-test.
        fields.setdefault("heartbeat_at", timezone.now())
    return ExecutionFactory(mode=ExecutionMode.BACKGROUND, **fields)


async def test_selects_redis_when_configured_else_in_process(bus_kind):
    bus = get_bus()
    assert isinstance(bus, RedisEventBus if bus_kind == "redis" else InProcessEventBus)


async def test_resume_after_any_seq_has_no_gaps_and_no_duplicates(bus_kind):
    row = await sync_to_async(_background_row)(status=ExecutionStatus.RUNNING)
    bus = get_bus()
    published = _events(6)
    for event in published:
        assert await bus.publish(str(row.pk), event)

    assert await _collect(str(row.pk)) == published
    for after in range(0, 6):
        # What a client that saw seq `after` and reconnected with Last-Event-ID: after receives.
        assert await _collect(str(row.pk), after) == [e for e in published if e.seq > after]


async def test_a_seq_is_stored_once_even_if_published_twice(bus_kind):
    row = await sync_to_async(_background_row)(status=ExecutionStatus.RUNNING)
    bus = get_bus()
    first, second = BusEvent(1, "output.delta", {"text": "a"}), BusEvent(1, "output.delta", {"text": "b"})
    assert await bus.publish(str(row.pk), first)
    assert not await bus.publish(str(row.pk), second)
    assert not await bus.publish(str(row.pk), BusEvent(0, "execution.created", {}))
    assert bus.last_seq_sync(str(row.pk)) == 1


async def test_a_live_reader_gets_events_as_they_are_published_and_stops_after_the_terminal(bus_kind):
    row = await sync_to_async(_background_row)(status=ExecutionStatus.RUNNING)
    bus = get_bus()
    published = _events(4)
    reader = asyncio.create_task(_collect(str(row.pk)))
    for event in published:
        await asyncio.sleep(0.05)
        await bus.publish(str(row.pk), event)
    assert await asyncio.wait_for(reader, 10) == published


async def test_publish_from_another_thread_wakes_a_reader(bus_kind):
    """The in-process runner publishes from its own thread and loop; readers live on the server's loop."""
    row = await sync_to_async(_background_row)(status=ExecutionStatus.RUNNING)
    bus = get_bus()
    reader = asyncio.create_task(_collect(str(row.pk)))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(lambda: [bus.publish_sync(str(row.pk), e) for e in _events(2)])  # no DB
    assert [e.seq for e in await asyncio.wait_for(reader, 10)] == [0, 1, 2]


async def test_redis_stream_expires(redis_prefix, redis_client, settings):
    settings.EVENTS_TTL_SECONDS = 123
    row = await sync_to_async(_background_row)(status=ExecutionStatus.RUNNING)
    await get_bus().publish(str(row.pk), BusEvent(0, "execution.created", {}))
    ttl = redis_client.ttl(f"{redis_prefix}events:{row.pk}")
    assert 0 < ttl <= 123


async def test_finished_run_without_events_is_read_from_the_row(bus_kind):
    """Events expired (or a sync run that never published): the client still gets the outcome."""
    finished = timezone.now() - timedelta(minutes=5)
    row = await sync_to_async(_background_row)(
        status=ExecutionStatus.COMPLETED,
        output="the answer",
        input_tokens=3,
        output_tokens=4,
        cost=Decimal("0.0012"),
        finished_at=finished,
        platform_used="openai",
    )
    [event] = await _collect(str(row.pk), 7)
    assert event.seq == 8
    assert event.name == "execution.completed"
    assert event.data["output"] == "the answer"
    assert event.data["tokens_used"] == 7
    assert event.data["cost"] == 0.0012
    assert event.data["execution_id"] == str(row.pk)


async def test_failed_row_after_some_events_ends_with_failed(bus_kind):
    row = await sync_to_async(_background_row)(
        status=ExecutionStatus.FAILED,
        error_code="worker_lost",
        error_message="gone",
        finished_at=timezone.now() - timedelta(minutes=1),
    )
    await get_bus().publish(str(row.pk), BusEvent(0, "execution.created", {}))
    events = await _collect(str(row.pk))
    assert [(e.seq, e.name) for e in events] == [(0, "execution.created"), (1, "execution.failed")]
    assert events[-1].data == {"error": {"code": "worker_lost", "message": "gone"}}


async def test_just_finished_background_row_waits_for_its_own_terminal_event(bus_kind):
    """Within the publish grace the published terminal event wins: no invented one, no duplicate."""
    row = await sync_to_async(_background_row)(
        status=ExecutionStatus.COMPLETED, output="x", finished_at=timezone.now()
    )
    bus = get_bus()
    reader = asyncio.create_task(_collect(str(row.pk)))
    await asyncio.sleep(0.5)
    await bus.publish(str(row.pk), BusEvent(0, "execution.created", {}))
    await bus.publish(str(row.pk), BusEvent(1, "execution.completed", {"output": "published"}))
    events = await asyncio.wait_for(reader, 10)
    assert [e.name for e in events] == ["execution.created", "execution.completed"]
    assert events[-1].data == {"output": "published"}


async def test_unknown_execution_ends_at_once(bus_kind):
    assert await _collect("00000000-0000-0000-0000-000000000000") == []


def test_in_process_bus_forgets_old_streams():
    bus = InProcessEventBus(ttl_seconds=3600)
    bus.MAX_STREAMS = 3
    for n in range(5):
        bus.publish_sync(f"e{n}", BusEvent(0, "execution.created", {}))
    assert [bus.last_seq_sync(f"e{n}") for n in range(5)] == [-1, -1, 0, 0, 0]
