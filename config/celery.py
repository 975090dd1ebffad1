"""The Celery app: background runs (apps/agents/tasks.py) and the periodic reaper.

Everything comes from Django settings (CELERY_* namespace, so CELERY_BROKER_URL is the broker). What is
derived from other settings is added lazily with `add_defaults`, so importing this module (which
config/__init__.py does) never loads Django settings by itself, and explicit CELERY_* settings still win.
"""

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("agentplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")


def _derived_defaults() -> dict[str, Any]:
    from django.conf import settings
    from kombu import Queue

    return {
        "broker_transport_options": {
            # Redis only (RabbitMQ has no such timer): an unacked message is handed out again after this
            # long, whoever holds it, alive or dead. With acks_late a message stays unacked for its whole run,
            # so this must outlast the longest run or a live run's message is redelivered. A consequence: a
            # run that a killed worker had received but not started would wait this long; the reaper sends
            # it again after PENDING_REDISPATCH_SECONDS instead (apps/agents/services/dispatch.py).
            "visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT,
            # How often the surviving workers look for such expired messages (kombu's default is ~100 s):
            # every 5 s. This only decides how soon after the visibility timeout they come back.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "global_keyprefix": settings.REDIS_KEY_PREFIX,
            # A dead broker connection must not hang a publish (an API request) forever.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            # RabbitMQ: a publish returns once the broker has the message (publisher confirms), so a run
            # the broker did not take is reported (503) instead of left pending.
            "confirm_publish": True,
        },
        "broker_connection_retry_on_startup": True,
        # Also in settings; restated here because a worker without them can lose or double-run executions.
        # acks_late: a message is acked after its run, so a run whose worker dies is handed out again (on
        # RabbitMQ at once, when the dead worker's connection closes; on Redis after the visibility
        # timeout). reject_on_worker_lost: a prefork pool process that dies mid-run gets its message
        # rejected and requeued at once, on both brokers. Either way run_background only ever runs a
        # `pending` row, so a redelivered started run is ended `worker_lost`, never run (billed) twice.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per pool process: a worker holds no runs it cannot start, so few are stranded with it.
        "worker_prefetch_multiplier": 1,
        # On a lost broker connection, keep running the current runs (they heartbeat the database, not the
        # broker); their messages are redelivered and refused as already running. True would cancel every
        # run on a broker blip. Set explicitly: Celery warns while it is unset.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_ignore_result": True,
        # Two queues: runs, and the reaper's passes on a queue of their own, so a pass never waits behind a
        # backlog of runs. `celery worker` without -Q consumes both (make worker); `-Q MAINTENANCE_QUEUE`
        # makes a small worker that only reaps.
        "task_default_queue": settings.RUNS_QUEUE,
        "task_queues": (Queue(settings.RUNS_QUEUE), Queue(settings.MAINTENANCE_QUEUE)),
        "task_routes": {"apps.agents.tasks.reap_executions_task": {"queue": settings.MAINTENANCE_QUEUE}},
        "beat_schedule": {
            "reap-executions": {
                "task": "apps.agents.tasks.reap_executions_task",
                "schedule": settings.REAPER_INTERVAL_SECONDS,
                # No `expires`: a pass that waited (every pool process busy with a long run) still runs.
                # Passes are idempotent and cheap, so a few queued ones run back to back harmlessly.
                "options": {"queue": settings.MAINTENANCE_QUEUE},
            },
            "rollup-stats": {
                "task": "apps.agents.tasks.rollup_stats_task",
                "schedule": settings.STATS_ROLLUP_SECONDS,
                # A pass that waited is still right to run: it counts whatever is left to count.
                "options": {"queue": settings.MAINTENANCE_QUEUE},
            },
        },
    }


app.add_defaults(_derived_defaults)
app.autodiscover_tasks()
