"""Background runs: queue a pending execution, run it on whichever process takes it, stop it from anywhere.

- With CELERY_BROKER_URL: `enqueue_execution` sends apps.agents.tasks.run_execution_task to the run queue
  (after the row's transaction commits; task id = execution id; dispatch.publish_run) and a Celery worker
  runs it with `run_background`. A row no worker started in time is sent again by the reaper (dispatch.py).
- Without a broker (the embedded `make run`): the server runs it itself, as an asyncio task on a runner
  thread with its own event loop (`InProcessRunner`), which also runs the reaper periodically.

`run_background` is the one entry point for both, and it is what makes redelivery safe: only a `pending` row
is run (the engine's start is a conditional UPDATE, so two deliveries cannot both start it). A row already
`running` is never run again, whatever its heartbeat says: its provider call may have been made and billed,
so a dead worker's run ends `worker_lost` (reaper) rather than being billed twice. Terminal rows: no-op.

Cancel: the engine's `cancel` flags the row (the worker's run watcher notices within a second) or stops a run of
this process at once; `notify_cancel` adds a Redis pub/sub notice so the worker holding the run stops it at
once too (cancel_listener.py listens), and tells event readers when a queued run was cancelled before it started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from apps.agents.errors import ApplicationError, IllegalTransition
from apps.agents.models import TERMINAL_STATUSES, AgentExecution, ExecutionStatus
from apps.agents.services.events_bus import BusEvent, get_bus, redis_url, terminal_event_for
from apps.agents.services.reaper import reap, stale_after
from apps.agents.services.state_manager import state_manager
from apps.agents.services.stats_rollup import roll_up

logger = logging.getLogger(__name__)

S = ExecutionStatus
T = TypeVar("T")


def broker_configured() -> bool:
    return bool(settings.CELERY_BROKER_URL)


def cancel_channel() -> str:
    return f"{settings.REDIS_KEY_PREFIX}cancel"


# --------------------------------------------------------------------------- running one execution


async def run_background(execution_id: str) -> str:
    """Run a queued execution if it is still `pending`; returns the status it was left in (for logs)."""
    row = await AgentExecution.objects.filter(pk=execution_id).values("status", "heartbeat_at").afirst()
    if row is None:
        logger.warning("background run %s: no such execution", execution_id)
        return "missing"
    status = row["status"]
    if status in TERMINAL_STATUSES:
        logger.info("background run %s is already %s: nothing to do (redelivery)", execution_id, status)
        return status
    if status == S.RUNNING:
        heartbeat = row["heartbeat_at"]
        if heartbeat is None or heartbeat < timezone.now() - stale_after():
            # Redelivered after its worker died mid-run. Not run again (it may have been billed): ended now
            # by the reaper's own rule, which re-checks staleness in its conditional update.
            logger.warning("background run %s was lost by its worker; not re-running it", execution_id)
            await sync_to_async(reap)(execution_id=execution_id)
        else:
            logger.info("background run %s is running elsewhere: not starting it twice", execution_id)
        return S.RUNNING
    from apps.agents.services.execution_engine import execution_engine

    async with get_bus().publisher(execution_id) as publisher:

        async def publish(seq: int, event: Any) -> None:
            await publisher.publish(BusEvent(seq, event.name, event.data()))

        # A second delivery racing this one loses the engine's conditional start and changes nothing.
        result = await execution_engine.run_execution(execution_id, publish=publish)
    if result.success:
        return S.COMPLETED
    # Failed, cancelled, or not ours after all (another delivery started it): the row says which.
    final = await AgentExecution.objects.filter(pk=execution_id).values_list("status", flat=True).afirst()
    return final or "missing"


# --------------------------------------------------------------------------- in-process runner


class InProcessRunner:
    """Runs background executions in this process, on one long-lived event loop in a daemon thread.

    Used by the API server when there is no broker (`submit`), and by Celery tasks (`run`): a loop that
    outlives each run keeps the provider SDK clients, their connection pools and the event publishers' Redis
    connections warm, where a fresh loop per task would rebuild them every time. A thread of its own rather
    than the caller's loop: the caller may be a sync DRF view, a Celery pool thread, a management command,
    or a request whose loop ends before the run does. Futures are kept until they finish (a bare task could
    be garbage-collected mid-run). After a fork (Celery prefork) the child starts its own loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._reaping = False
        self._runs: dict[str, concurrent.futures.Future[str]] = {}

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="background-runs", daemon=True).start()
                self._loop, self._pid, self._reaping = loop, os.getpid(), False
                self._runs = {}
            return self._loop

    def loop(self) -> asyncio.AbstractEventLoop:
        """The process's long-lived run loop (started on first use); MCP sessions live on it too."""
        return self._ensure_loop()

    def submit(self, execution_id: str) -> bool:
        """Start running `execution_id` (no broker: the server runs it); False if already running here."""
        loop = self._ensure_loop()
        with self._lock:
            if not self._reaping:  # without a broker there is no celery beat: this process reaps
                self._start(self._reap_periodically(), loop)
                self._reaping = True
            if execution_id in self._runs:
                return False
            future = self._start(self._run(execution_id), loop)
            self._runs[execution_id] = future
        future.add_done_callback(lambda done: self._finished(execution_id, done))
        return True

    def run(self, execution_id: str) -> str:
        """Run `execution_id` and wait for it (a Celery task: the message is acked when this returns)."""
        loop = self._ensure_loop()
        future = self._start(self._run(execution_id), loop)
        with self._lock:
            self._runs.setdefault(execution_id, future)
        future.add_done_callback(lambda done: self._finished(execution_id, done, log=False))
        return future.result()

    @staticmethod
    def _start(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[T]:
        # In an empty context: the task would otherwise inherit the caller's context variables, among them
        # asgiref's "inside sync_to_async" marker (then every ORM call of the run refuses to run).
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)

    def holds(self, execution_id: str) -> bool:
        return execution_id in self._runs

    def wait(self, execution_id: str, timeout: float | None = None) -> None:
        """Block until this process's run of `execution_id` is over (tests, shutdown)."""
        future = self._runs.get(execution_id)
        if future is not None:
            with contextlib.suppress(concurrent.futures.CancelledError):
                future.exception(timeout)

    def _finished(
        self, execution_id: str, future: concurrent.futures.Future[str], *, log: bool = True
    ) -> None:
        with self._lock:
            if self._runs.get(execution_id) is future:
                del self._runs[execution_id]
        if log and not future.cancelled() and future.exception() is not None:
            logger.error("background run %s crashed", execution_id, exc_info=future.exception())

    @staticmethod
    async def _run(execution_id: str) -> str:
        # This loop's ORM calls share one executor thread that no request cycle (nor Celery's Django fixup)
        # tidies: drop a dead or expired database connection before each run, as a request would.
        await sync_to_async(close_old_connections)()
        return await run_background(execution_id)

    @staticmethod
    async def _reap_periodically() -> None:
        # Without a broker there is no celery beat either: this process also rolls up stats (every
        # STATS_ROLLUP_SECONDS, counted in reaper intervals).
        every = max(1, round(settings.STATS_ROLLUP_SECONDS / settings.REAPER_INTERVAL_SECONDS))
        passes = 0
        while True:
            await asyncio.sleep(float(settings.REAPER_INTERVAL_SECONDS))
            passes += 1
            try:
                await sync_to_async(maintenance_pass)(roll_up_stats=passes % every == 0)
            except Exception:
                logger.exception("in-process maintenance pass failed")


def maintenance_pass(*, roll_up_stats: bool) -> None:
    """One pass of the in-process runner's maintenance: the reaper, and the stats rollup when due.

    Its connection is the executor thread's, which no request cycle tidies, as for a run (`_run`): dropped
    first when it is dead, expired or left in a transaction by a pass that failed inside one (a lost database
    connection while `atomic()` closed). Without this, every later pass reused the broken connection."""
    close_old_connections()
    reap()
    if roll_up_stats:
        roll_up()


runner = InProcessRunner()


# --------------------------------------------------------------------------- queueing


def _send(execution_id: str) -> None:
    """Publish the task; if the broker refuses, end the row now instead of leaving it pending for an hour."""
    from apps.agents.services.dispatch import publish_run

    try:
        publish_run(execution_id)
    except Exception as exc:
        logger.error("could not queue execution %s: %s", execution_id, exc)
        execution = state_manager.get_execution(execution_id)
        if execution is not None:
            with contextlib.suppress(IllegalTransition):
                state_manager.fail_execution(
                    execution, code="worker_lost", message="could not be queued: the broker is unavailable"
                )
        raise ApplicationError(
            "The run could not be queued; try again shortly.", code="queue_unavailable", status=503
        ) from exc


def _enqueue_now(execution_id: str) -> None:
    if broker_configured():
        # After commit: a worker must never receive the id of a row it cannot see yet.
        transaction.on_commit(lambda: _send(execution_id))
    else:
        runner.submit(execution_id)


def enqueue_execution(execution: AgentExecution) -> Any:
    """Queue a pending execution. From async code this returns an awaitable (await it): the row was written
    through the async ORM in autocommit, so it is committed, and the broker publish runs off the loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if not getattr(execution, "replayed", False):  # an Idempotency-Key replay was queued by the first
            _enqueue_now(str(execution.pk))
        return None
    return aenqueue_execution(execution)


async def aenqueue_execution(execution: AgentExecution) -> None:
    if getattr(execution, "replayed", False):
        return
    execution_id = str(execution.pk)
    if broker_configured():
        await sync_to_async(_send)(execution_id)
    else:
        runner.submit(execution_id)


# --------------------------------------------------------------------------- cancel


def _publish_cancel_notice(execution_id: str) -> None:
    url = redis_url()
    if not url:
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.publish(cancel_channel(), execution_id)
        finally:
            client.close()
    except Exception as exc:  # the flag in the database still stops the run within a second
        logger.warning("cancel notice for %s not sent: %s", execution_id, exc)


def notify_cancel(execution_id: Any) -> None:
    """After the engine accepted a cancel: tell the process running it, or the readers if it has ended."""
    execution_id = str(execution_id)
    execution = AgentExecution.objects.filter(pk=execution_id).first()
    if execution is None:
        return
    if execution.status in TERMINAL_STATUSES:
        # Cancelled before it started: no run will publish its end, so publish it here.
        bus = get_bus()
        if bus.last_seq_sync(execution_id) < 0:
            bus.publish_sync(execution_id, terminal_event_for(execution, 1))
        return
    if not runner.holds(execution_id):
        _publish_cancel_notice(execution_id)


anotify_cancel = sync_to_async(notify_cancel)


async def request_cancel(execution_id: Any) -> bool:
    """Cancel a pending or running execution from any process; False if unknown or already over."""
    from apps.agents.services.execution_engine import execution_engine

    requested = await execution_engine.cancel(execution_id)
    if requested:
        await anotify_cancel(execution_id)
    return requested
