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

    return {
        "broker_transport_options": {
            # Redis (and SQS) hand an unacked message to another worker after this long. It must outlast
            # the longest run: with acks_late a message stays unacked for the whole run.
            "visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT,
            # Messages of a worker that died are put back by the surviving workers: check every few seconds
            # instead of kombu's default ~100 s between scans.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "global_keyprefix": settings.REDIS_KEY_PREFIX,
            # A dead broker connection must not hang a publish (an API request) forever.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        "broker_connection_retry_on_startup": True,
        # Also in settings; restated here because a worker without them can lose or double-run executions:
        # ack only after the run (a killed worker's message is redelivered), one message per process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "beat_schedule": {
            "reap-executions": {
                "task": "apps.agents.tasks.reap_executions_task",
                "schedule": settings.REAPER_INTERVAL_SECONDS,
                # A pass that could not run in time is pointless once the next one is due.
                "options": {"expires": settings.REAPER_INTERVAL_SECONDS},
            },
            "rollup-stats": {
                "task": "apps.agents.tasks.rollup_stats_task",
                "schedule": settings.STATS_ROLLUP_SECONDS,
                "options": {"expires": settings.STATS_ROLLUP_SECONDS},
            },
        },
    }


app.add_defaults(_derived_defaults)
app.autodiscover_tasks()
