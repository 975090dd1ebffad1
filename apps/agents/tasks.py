"""Celery tasks: thin wrappers over services (apps/agents/services/background.py, reaper.py,
cancel_listener.py).

Delivery (config/celery.py): acks_late + reject_on_worker_lost, prefetch 1. A message is acked only after
its run. When a prefork pool process dies, its worker rejects the message and the broker hands it out again
at once. When a whole worker dies, RabbitMQ requeues its unacked messages at once (the connection closed);
Redis keeps them in its unacked set until CELERY_VISIBILITY_TIMEOUT (hours, longer than any run), so a run
that worker had received but not started is sent again by the reaper instead (services/dispatch.py, after
PENDING_REDISPATCH_SECONDS). Whatever copy arrives, `run_background` decides: only a `pending` row is run,
and a started one never again (its provider call may have been billed).

The reaper's task goes to its own queue (MAINTENANCE_QUEUE), so its passes never wait behind queued runs.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init

logger = logging.getLogger(__name__)


@shared_task(
    name="apps.agents.tasks.run_execution_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # Never retried by Celery: a failed run is recorded as failed; the engine already retried providers.
    max_retries=0,
)
def run_execution_task(execution_id: str) -> str:
    from apps.agents.services.background import runner
    from apps.agents.services.cancel_listener import cancel_listener

    cancel_listener.ensure_started()
    # On the process's long-lived run loop (see InProcessRunner), not a fresh loop per task: provider
    # clients and their connections stay warm between runs.
    return runner.run(execution_id)


@shared_task(name="apps.agents.tasks.reap_executions_task", ignore_result=True)
def reap_executions_task() -> dict[str, int]:
    from apps.agents.services.reaper import reap

    report = reap()
    return {
        "lost": len(report.lost),
        "timed_out": len(report.timed_out),
        "cancelled": len(report.cancelled),
        "redispatched": len(report.redispatched),
    }


@shared_task(name="apps.agents.tasks.rollup_stats_task", ignore_result=True)
def rollup_stats_task() -> int:
    from apps.agents.services.stats_rollup import roll_up

    return roll_up().executions


@worker_init.connect
def _prepare_worker(**kwargs: object) -> None:
    """Before the first task: refuse to start without a broker (a worker would otherwise try
    amqp://localhost forever), and build the platform registry now. Importing the provider SDKs takes
    seconds on a small machine; paid by the first run, it would block that run's event loop (no heartbeat)
    and add to its latency. Prefork children are forked afterwards and inherit the imported modules."""
    from django.conf import settings

    from apps.platforms.registry import get_registry

    if not settings.CELERY_BROKER_URL:
        raise RuntimeError(
            "CELERY_BROKER_URL is not set: a worker needs a broker, e.g. "
            "CELERY_BROKER_URL=redis://127.0.0.1:6379/0 (without one, the API server runs background "
            "executions itself)"
        )
    get_registry()
