"""Cross-process cancel notices: one Redis pub/sub subscription per worker process.

A cancel request flags the row (the process's run watcher, services/run_watcher.py, notices within a second) and publishes the execution id
on the cancel channel (services/background.py `notify_cancel`); the process holding that run stops it at once.
"""

from __future__ import annotations

import logging
import os
import threading

from apps.agents.services.background import cancel_channel
from apps.agents.services.events_bus import redis_url

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0


class CancelListener:
    """Listens on the cancel channel in a daemon thread, reconnecting after a lost connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None

    def ensure_started(self) -> None:
        # Per process: a prefork child does not inherit its parent's threads.
        if self._pid == os.getpid() or not redis_url():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._listen, name="cancel-listener", daemon=True).start()

    def _listen(self) -> None:
        import redis

        while True:
            try:
                client = redis.Redis.from_url(redis_url(), socket_connect_timeout=5, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(cancel_channel())
                for message in pubsub.listen():
                    stop(message.get("data"))
            except Exception:
                logger.warning("cancel listener: Redis connection lost; reconnecting", exc_info=True)
                threading.Event().wait(RECONNECT_SECONDS)


def stop(data: object) -> bool:
    """Act on one notice: stop the run it names if this process holds it."""
    from apps.agents.services.execution_engine import execution_engine

    execution_id = data.decode() if isinstance(data, bytes) else str(data)
    stopped = execution_engine.stop_local(execution_id)
    if stopped:
        logger.info("cancel notice: stopping %s now", execution_id, extra={"execution_id": execution_id})
    return stopped


cancel_listener = CancelListener()
