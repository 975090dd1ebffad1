"""One watcher per process (per event loop) for every run it holds: heartbeats and cancel requests.

A running row must show it is alive (`heartbeat_at`, every EXECUTION_HEARTBEAT_SECONDS, which the reaper
reads) and must stop when a cancel was requested from another process or the row was ended elsewhere (the
reaper). Each run used to poll its own row every EXECUTION_CANCEL_POLL_SECONDS: with 500 open streams that
was 500 queries, 500 thread hops and 500 pool checkouts a second, most of the server's CPU (bench/
load_streams.py). Here the runs of one event loop share one task that asks about all of them at once:
one SELECT per poll and one UPDATE per heartbeat, whatever the number of runs.

A cancel made in this process stops its run at once (ExecutionEngine.stop_local), and one made in another
process does too when Redis is configured (services/cancel_listener.py); the poll is the fallback that
needs nothing but the database, so its latency (about EXECUTION_CANCEL_POLL_SECONDS) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Callable, Iterable

from django.conf import settings
from django.utils import timezone

from apps.agents.models import AgentExecution
from apps.agents.models import ExecutionStatus as Status
from apps.agents.services.db import db_unit

logger = logging.getLogger(__name__)

#: Ids per query: well under SQLite's bound-parameter limit, and one index probe each on PostgreSQL.
BATCH = 500

Stop = Callable[[], None]


def _live(ids: list[str]) -> Iterable[str]:
    return AgentExecution.objects.filter(pk__in=ids, status=Status.RUNNING, cancel_requested_at=None)


def unwanted(ids: list[str], *, beat: bool) -> set[str]:
    """Of `ids`, those no longer running or with a cancel requested. `beat` first records the heartbeat of
    the others (one UPDATE per batch)."""
    wanted: set[str] = set()
    now = timezone.now()
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        if beat:
            _live(batch).update(heartbeat_at=now)
        wanted.update(str(pk) for pk in _live(batch).values_list("pk", flat=True))
    return set(ids) - wanted


_unwanted = db_unit(unwanted)


class RunWatcher:
    """The runs of one event loop and the one task that watches them (it ends when none is left)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._runs: dict[str, tuple[float, Stop]] = {}  # execution id -> (when watched, stop)
        self._task: asyncio.Task[None] | None = None

    def watch(self, execution_id: str, stop: Stop) -> Callable[[], None]:
        """Call `stop()` once the row `execution_id` should no longer run; returns "forget it"."""
        self._runs[execution_id] = (self._loop.time(), stop)
        if self._task is None or self._task.done():
            # An empty context: the task outlives the run that started it, and must not log as that run.
            self._task = self._loop.create_task(self._poll(), context=contextvars.Context())
        return lambda: self._forget(execution_id, stop)

    def _forget(self, execution_id: str, stop: Stop) -> None:
        entry = self._runs.get(execution_id)
        if entry is not None and entry[1] is stop:
            del self._runs[execution_id]

    async def _poll(self) -> None:
        next_beat = 0.0
        while self._runs:
            # Settings are read each round, so a test's override applies to the next one.
            beat_every = max(0.05, float(settings.EXECUTION_HEARTBEAT_SECONDS))
            poll = min(float(settings.EXECUTION_CANCEL_POLL_SECONDS), beat_every)
            await asyncio.sleep(poll)
            # A run is first asked about after about one poll interval, as when each run polled its own row.
            cutoff = self._loop.time() - poll / 2
            ids = [execution_id for execution_id, (since, _) in self._runs.items() if since <= cutoff]
            if not ids:
                continue
            due = self._loop.time() >= next_beat
            try:
                ended = await _unwanted(ids, beat=due)
            except (
                Exception
            ):  # a database hiccup must not stop the watching; the reaper covers a dead process
                logger.warning("run watcher: heartbeat / cancel poll failed", exc_info=True)
                continue
            if due:
                next_beat = self._loop.time() + beat_every
            for execution_id in ended:
                entry = self._runs.pop(execution_id, None)
                if entry is not None:
                    entry[1]()


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RunWatcher] = weakref.WeakKeyDictionary()


def watch(execution_id: str, stop: Stop) -> Callable[[], None]:
    """Watch a run of the running event loop (see the module docstring); returns "forget it"."""
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(loop)
    if watcher is None:
        watcher = _watchers[loop] = RunWatcher(loop)
    return watcher.watch(execution_id, stop)
