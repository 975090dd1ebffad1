"""The reaper: no execution stays `pending` or `running` forever.

Run by celery beat every REAPER_INTERVAL_SECONDS (apps.agents.tasks.reap_executions_task, on the
maintenance queue), by `manage.py reap_executions`, and by the in-process runner when there is no broker.
Rules, in order:

- running background row whose heartbeat is older than EXECUTION_STALE_SECONDS: its worker died (SIGKILL,
  OOM, machine gone). Failed `worker_lost` (or `cancelled` if a cancel was already requested). Only
  background rows are judged by heartbeat: they are the ones a worker heartbeats.
- any live row past `deadline_at`:
  * running: failed `worker_lost` when its heartbeat is stale too, else `timeout` (the process is alive but
    the run overran its own timeout plus grace; its late final write will be refused).
  * pending: no worker took it within PENDING_DEADLINE_SECONDS (message lost, or no worker running). Failed
    `worker_lost`, not `timeout`: the agent never ran, so nothing about the request is wrong and a retry is
    safe, whereas `timeout` says the run itself took too long.
- pending background row re-sent PENDING_MAX_REDISPATCHES times and still not started, while the run queue
  is empty ("unstarted"): failed `worker_lost`.

Then, while the run queue is empty, every background row still pending PENDING_REDISPATCH_SECONDS after it
was queued is sent to the workers again (apps/agents/services/dispatch.py): its message was lost or is held
by a dead worker. That is the one thing the reaper restarts, and only because the row never started.

Budget reservations (spend control) of rows ended here as lost are released at once; those of any other
ended row after EXECUTION_STALE_SECONDS (its process may still settle its last attempt with the real usage).

Each row is ended by one conditional UPDATE that repeats the condition it was selected by, so a row that
finished, heartbeated or was picked up in the meantime is left alone. A started run is never restarted here:
its provider call may already have been made (and billed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.agents.models import AgentExecution, ErrorCode, ExecutionMode, ExecutionStatus
from apps.agents.services import dispatch
from apps.agents.services.state_manager import state_manager

logger = logging.getLogger(__name__)

S = ExecutionStatus
# Rows that somehow have no deadline (created outside the StateManager) still get one: their creation time
# plus the longest anything may legitimately take.
NO_DEADLINE_LIMIT = timedelta(hours=3)


@dataclass
class ReapReport:
    lost: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)  # sent again, not ended: not in `total`
    #: Budget reservations released (apps/agents/services/budgets.py), held by runs that no longer run.
    released: int = 0

    @property
    def total(self) -> int:
        return len(self.lost) + len(self.timed_out) + len(self.cancelled)


def stale_after() -> timedelta:
    """How long without a heartbeat before a background run counts as lost (at least two beats)."""
    return timedelta(
        seconds=max(float(settings.EXECUTION_STALE_SECONDS), 2 * float(settings.EXECUTION_HEARTBEAT_SECONDS))
    )


def _rules(now: datetime) -> list[tuple[Q, str]]:
    stale = Q(heartbeat_at__lt=now - stale_after()) | Q(heartbeat_at__isnull=True)
    overdue = Q(deadline_at__lt=now) | Q(deadline_at__isnull=True, created_at__lt=now - NO_DEADLINE_LIMIT)
    return [
        (Q(status=S.RUNNING, mode=ExecutionMode.BACKGROUND) & stale, "heartbeat"),
        (Q(status=S.RUNNING) & overdue, "deadline"),
        (Q(status=S.PENDING) & overdue, "pending"),
    ]


def _outcome(execution: AgentExecution, rule: str, now: datetime) -> tuple[str, str, str]:
    """(target status, error code, message) for a row selected by `rule`."""
    if execution.cancel_requested_at is not None:
        return S.CANCELLED, ErrorCode.CANCELLED_BY_USER, "cancelled (the process running it was lost)"
    if rule == "pending":
        waited = int((now - execution.created_at).total_seconds())
        return S.FAILED, ErrorCode.WORKER_LOST, f"no worker picked this execution up within {waited} s"
    if rule == "unstarted":
        sends = execution.redispatch_count + 1
        message = f"sent to the workers {sends} times; none of them started it"
        return S.FAILED, ErrorCode.WORKER_LOST, message
    heartbeat = execution.heartbeat_at.isoformat() if execution.heartbeat_at else "never"
    if rule == "heartbeat" or (execution.heartbeat_at or execution.created_at) < now - stale_after():
        message = f"the process running this execution was lost (last heartbeat {heartbeat})"
        return S.FAILED, ErrorCode.WORKER_LOST, message
    return S.FAILED, ErrorCode.TIMEOUT, "the execution ran past its deadline"


def _end(execution: AgentExecution, condition: Q, rule: str, now: datetime) -> str | None:
    target, code, message = _outcome(execution, rule, now)
    where, fields = state_manager._plan(execution, target, {"error_code": code, "error_message": message})
    if AgentExecution.objects.filter(where & condition).update(**fields) != 1:
        return None  # finished, heartbeated or started meanwhile: not ours to end
    logger.warning(
        "reaper: execution %s %s -> %s (%s)",
        execution.pk,
        execution.status,
        target,
        message,
        extra={"execution_id": str(execution.pk)},
    )
    for name, value in fields.items():
        setattr(execution, name, value)
    _announce(execution)
    return target


def _announce(execution: AgentExecution) -> None:
    """Tell readers of the run's events, and free its conversation."""
    from apps.agents.services.conversation_lock import release_conversation
    from apps.agents.services.events_bus import get_bus, terminal_event_for

    if execution.conversation_id:
        release_conversation(execution.conversation_id, execution.pk)
    if execution.mode == ExecutionMode.BACKGROUND:
        bus = get_bus()
        # Runs number their events from 1; a reader without Last-Event-ID asks for everything after 0.
        event = terminal_event_for(execution, max(bus.last_seq_sync(str(execution.pk)), 0) + 1)
        bus.publish_sync(str(execution.pk), event)


def reap(now: datetime | None = None, *, execution_id: Any = None) -> ReapReport:
    """End every live row that the rules say is lost or overdue (or just `execution_id`); then re-send
    the unstarted ones (see dispatch.py)."""
    now = now or timezone.now()
    report = ReapReport()
    rules = _rules(now)
    # Re-dispatch belongs to the periodic pass, not to the one-row check of a redelivered message.
    idle = execution_id is None and dispatch.queue_idle()
    if idle:
        rules.append((dispatch.given_up(now), "unstarted"))
    for condition, rule in rules:
        rows = AgentExecution.objects.filter(condition).select_related("agent").order_by("deadline_at")
        if execution_id is not None:
            rows = rows.filter(pk=execution_id)
        for execution in rows[:1000]:
            target = _end(execution, condition, rule, now)
            if target == S.CANCELLED:
                report.cancelled.append(str(execution.pk))
            elif target is not None:
                is_timeout = execution.error_code == ErrorCode.TIMEOUT
                (report.timed_out if is_timeout else report.lost).append(str(execution.pk))
    if idle:
        report.redispatched = dispatch.redispatch(now)
    # Spend control: what lost runs had reserved goes back to their budgets.
    from apps.agents.services.budgets import release_orphaned

    report.released = release_orphaned(
        lost=report.lost, now=now, grace=stale_after(), sweep=execution_id is None
    )
    if report.total:
        counts = (len(report.lost), len(report.timed_out), len(report.cancelled))
        logger.info("reaper: %d lost, %d timed out, %d cancelled", *counts)
    return report
