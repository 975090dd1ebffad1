"""Dispatch: sending a queued background run to the workers, and sending it again when nobody started it.

A `pending` background row can be left behind by its message, not by the database:

- on Redis, a worker killed after receiving the message (prefetched behind a run, or between receipt and
  start) leaves it in the broker's unacked set, and Redis hands it out again only after
  CELERY_VISIBILITY_TIMEOUT (hours: it must outlast the longest run, see config/celery.py);
- on any broker, a worker killed between taking the message and recording it loses it outright, and a task
  that failed before starting the run (a database error) was acked all the same.

So the reaper re-sends (`redispatch`) every background row still `pending` PENDING_REDISPATCH_SECONDS after
it was queued or last re-sent. That is safe by construction: only a `pending` row is ever run, and starting
is a conditional UPDATE (StateManager), so of any number of copies of a message exactly one starts the run
and the others find it started or over and do nothing (background.run_background).

Only while the run queue is empty (`queue_idle`): while messages wait in it, an unstarted row may just be
one of them, and re-sending would add duplicates behind it (and count a backlog as losses). With nothing
waiting, a row that has not started after the threshold is not going to start from its old message. A row
re-sent PENDING_MAX_REDISPATCHES times without starting is failed `worker_lost` by the reaper (its rule
"unstarted", condition `given_up`): something takes its messages and never runs them.

Each re-send is claimed by a conditional UPDATE on (status, redispatch_count), so reapers running at once
send a row once; it is recorded on the row (redispatch_count, redispatched_at) and logged with its id.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

from apps.agents.models import AgentExecution, ExecutionMode, ExecutionStatus

logger = logging.getLogger(__name__)

S = ExecutionStatus


def publish_run(execution_id: str) -> None:
    """Send apps.agents.tasks.run_execution_task for `execution_id` to the run queue (raises if the broker
    refuses). The task id is the execution id, for every copy: logs and `celery inspect` show which run."""
    from apps.agents.tasks import run_execution_task

    # The queue is named per call (not only through task_default_queue) so a changed RUNS_QUEUE setting
    # applies without rebuilding the Celery app's cached queue table.
    run_execution_task.apply_async(args=[execution_id], task_id=execution_id, queue=settings.RUNS_QUEUE)


def waiting_runs() -> int | None:
    """Messages waiting (ready, not yet handed to a worker) in the run queue; 0 without a broker (the server
    runs each row at once), None when the broker cannot be asked."""
    if not settings.CELERY_BROKER_URL:
        return 0
    from config.celery import app

    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            # RabbitMQ answers a passive declare with the queue's ready messages (those handed to a
            # consumer and unacked are not counted). Redis's answer is the length of the queue's lists (the
            # unacked set is apart); its declare stores nothing, and its passive form misses a key prefix.
            passive = connection.transport.driver_type == "amqp"
            try:
                return int(channel.queue_declare(queue=settings.RUNS_QUEUE, passive=passive).message_count)
            except connection.channel_errors:
                return 0  # no such queue yet: nothing waits
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    except Exception as exc:
        logger.warning("dispatch: cannot count the run queue %r: %s", settings.RUNS_QUEUE, exc)
        return None


def queue_idle() -> bool:
    """True when nothing waits in the run queue, so an unstarted row's message is lost or held by a dead
    worker rather than queued behind other runs."""
    waiting = waiting_runs()
    if waiting:
        logger.info("dispatch: %d runs wait in the queue; unstarted rows are not re-sent now", waiting)
    return waiting == 0


def unstarted(now: datetime) -> Q:
    """Background rows still `pending` PENDING_REDISPATCH_SECONDS after they were queued or last re-sent."""
    cutoff = now - timedelta(seconds=float(settings.PENDING_REDISPATCH_SECONDS))
    queued_before = Q(redispatched_at__lt=cutoff) | Q(redispatched_at__isnull=True, created_at__lt=cutoff)
    return Q(status=S.PENDING, mode=ExecutionMode.BACKGROUND) & queued_before


def given_up(now: datetime) -> Q:
    """Unstarted rows already re-sent PENDING_MAX_REDISPATCHES times: the reaper fails them worker_lost."""
    return unstarted(now) & Q(redispatch_count__gte=int(settings.PENDING_MAX_REDISPATCHES))


def _resend(execution_id: str) -> None:
    if settings.CELERY_BROKER_URL:
        publish_run(execution_id)
    else:
        # No broker: the servers run background rows themselves, and this row's server is gone (it would
        # have started it at once). This process takes it over.
        from apps.agents.services.background import runner

        runner.submit(execution_id)


def redispatch(now: datetime, *, limit: int = 1000) -> list[str]:
    """Send every unstarted row (not yet given up) again; returns the ids sent. Call only when
    `queue_idle()`."""
    most = int(settings.PENDING_MAX_REDISPATCHES)
    rows = (
        AgentExecution.objects.filter(unstarted(now), redispatch_count__lt=most)
        .order_by("created_at")
        .values_list("pk", "redispatch_count", "created_at", "redispatched_at")[:limit]
    )
    sent: list[str] = []
    for pk, count, created_at, redispatched_at in rows:
        claim = AgentExecution.objects.filter(unstarted(now), pk=pk, redispatch_count=count)
        if claim.update(redispatch_count=count + 1, redispatched_at=now, updated_at=now) != 1:
            continue  # started, ended, or re-sent by another reaper meanwhile
        execution_id = str(pk)
        waited = int((now - (redispatched_at or created_at)).total_seconds())
        logger.warning(
            "dispatch: execution %s not started %d s after it was %s; sending it again (re-send %d of %d)",
            execution_id,
            waited,
            "re-sent" if redispatched_at else "queued",
            count + 1,
            most,
            extra={"execution_id": execution_id},
        )
        try:
            _resend(execution_id)
        except Exception:
            # Counted all the same: the next pass sends it again, or gives up after the last re-send.
            logger.exception(
                "dispatch: re-sending execution %s failed", execution_id, extra={"execution_id": execution_id}
            )
            continue
        sent.append(execution_id)
    return sent
