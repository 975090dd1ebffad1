"""The health check (a selector: it reads, never writes): database, broker when configured, platforms."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from apps.agents.services.db import pool_exhausted, pooled

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True, slots=True)
class Health:
    database: Check
    broker: Check | None  # None: no broker configured (background runs run in the server)
    # Names only: the registry knows keys and URLs, none of which belongs in a public answer.
    platforms: list[str]

    @property
    def healthy(self) -> bool:
        return self.database.ok and (self.broker is None or self.broker.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "degraded",
            "database": self.database.as_dict(),
            "broker": self.broker.as_dict() if self.broker is not None else None,
            "platforms": self.platforms,
        }


def health_check() -> Health:
    from apps.platforms.registry import get_registry

    broker = check_broker() if settings.CELERY_BROKER_URL else None
    return Health(database=check_database(), broker=broker, platforms=get_registry().names())


#: Seconds the health check waits for a pooled connection: a health check must answer promptly, not after the
#: pool's own timeout (DB_POOL_TIMEOUT, 10 s) behind a burst of run requests.
DATABASE_WAIT_SECONDS = 2.0


def _pool() -> Any:
    """The connection pool of the default database, or None (SQLite, or DB_POOL_MAX_SIZE=0)."""
    return connection.pool if pooled() else None


def check_database() -> Check:
    pool = _pool()
    try:
        if pool is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        else:
            # A connection of its own from the pool, waited for at most DATABASE_WAIT_SECONDS, and given back
            # at once (not held by the request's thread until the response is sent). open(): idempotent, as
            # Django calls it before each checkout (the pool opens on first use).
            pool.open()
            with pool.connection(timeout=DATABASE_WAIT_SECONDS) as conn:
                conn.execute("SELECT 1")
        return Check(ok=True)
    except Exception as exc:
        logger.warning("health: database check failed: %s", type(exc).__name__)
        if pool is not None and pool_exhausted(exc):
            # Every pooled connection is in use serving requests: the database answers, the process is at
            # capacity. Reported, not failed: a probe must not pull a busy but working server out of service
            # (the requests beyond capacity get their own 503 `overloaded`).
            return Check(ok=True, detail="busy: every pooled connection is in use")
        return Check(ok=False, detail="database unreachable")


def check_broker() -> Check:
    from kombu import Connection

    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as broker:
            broker.ensure_connection(max_retries=1, timeout=2)
        return Check(ok=True)
    except Exception as exc:
        logger.warning("health: broker check failed: %s", type(exc).__name__)
        return Check(ok=False, detail="broker unreachable")
