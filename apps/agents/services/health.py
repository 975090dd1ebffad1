"""The health check (a selector: it reads, never writes): database, broker when configured, platforms."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import connection

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


def check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return Check(ok=True)
    except Exception as exc:
        logger.warning("health: database check failed: %s", type(exc).__name__)
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
