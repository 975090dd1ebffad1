"""Real Redis, real Celery worker processes, the test database shared with them.

Redis: db REDIS_TEST_DB on 127.0.0.1:6379, and every key (broker and events) under a prefix unique to this
test session, so parallel sessions never consume each other's messages; only those keys are deleted.
Workers: `celery -A config worker` subprocesses with the same DATABASE_URL as the test database and the
fake provider servers' URLs, started by `start_worker` (tests/agents/background/workers.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from asgiref.sync import SyncToAsync
from django.db import connections

REDIS_TEST_DB = int(os.environ.get("BACKGROUND_TEST_REDIS_DB", "7"))
REDIS_TEST_URL = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
SESSION_PREFIX = f"bgtest-{uuid.uuid4().hex[:10]}:"


def _delete_prefixed(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"these tests need Redis at {REDIS_TEST_URL}: {exc}")
    yield client
    _delete_prefixed(client, SESSION_PREFIX)
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis, settings) -> Iterator[str]:
    """Events and cancel notices go to the test Redis under a prefix of this test's own."""
    prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}:"
    settings.REDIS_URL = REDIS_TEST_URL
    settings.REDIS_KEY_PREFIX = prefix
    yield prefix
    _delete_prefixed(redis_client, prefix)


@pytest.fixture
def no_redis(settings) -> None:
    """The embedded default: no Redis, no broker."""
    settings.REDIS_URL = ""
    settings.CELERY_BROKER_URL = ""


@pytest.fixture(autouse=True)
def _close_executor_connections() -> Iterator[None]:
    """Async ORM calls run in asgiref's one shared executor thread, whose connections no request cycle
    closes here; left open they keep PostgreSQL from dropping the test database at the end."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
