"""Real Redis, real Celery worker processes, the test database shared with them.

Redis: REDIS_URL from the environment or db 7 on 127.0.0.1:6379, and every key (broker and events) under a prefix unique to this
test session, so parallel sessions never consume each other's messages; only those keys are deleted.
Workers: `celery -A config worker` subprocesses with the same DATABASE_URL as the test database and the
fake provider servers' URLs, started by `start_worker` (tests/agents/background/workers.py).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import kombu
import kombu.pools
import pytest
import redis
from asgiref.sync import SyncToAsync
from django.db import connections

from tests.agents.background.workers import WorkerFactory, WorkerProcess


def _test_redis_url() -> str:
    """The environment's Redis when it names one (CI's PostgreSQL + Redis run), else db 7 of the local one."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    return (
        broker if broker.startswith("redis://") else os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/7"
    )


REDIS_TEST_URL = _test_redis_url()
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


# ---------------------------------------------------------------- real workers

# What the workers (and the test process, for the decisions it makes itself) use: quick heartbeats so a
# killed worker's run is stale within seconds, and a short visibility timeout so its message is handed to
# the next worker within seconds instead of two hours.
WORKER_TIMING = {
    "EXECUTION_HEARTBEAT_SECONDS": 0.5,
    "EXECUTION_STALE_SECONDS": 3,
    "CELERY_VISIBILITY_TIMEOUT": 10,
    "REAPER_INTERVAL_SECONDS": 3600,  # the tests run the reaper themselves when they mean to
    # A reaper pass (beat, or a test) sends an unstarted row again after 2 s instead of a minute.
    "PENDING_REDISPATCH_SECONDS": 2,
}
BROKER_PREFIX = f"{SESSION_PREFIX}w:"


@pytest.fixture(scope="session")
def worker_factory(
    redis_client,
    django_db_setup,
    fake_openai_server,
    fake_anthropic_server,
    fake_gemini_server,
    tmp_path_factory,
) -> Iterator[WorkerFactory]:
    """Starts real `celery -A config worker` processes pointed at the test database, the test Redis and
    the fake providers. The test process publishes to the same broker (see `broker` below)."""
    from config.celery import app as celery_app
    from tests.fakes.registry import ANTHROPIC_TEST_KEY, GEMINI_TEST_KEY, OPENAI_TEST_KEY

    provider_env = {
        "OPENAI_BASE_URL": fake_openai_server.url + "/v1",
        "OPENAI_API_KEY": OPENAI_TEST_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic_server.url,
        "ANTHROPIC_API_KEY": ANTHROPIC_TEST_KEY,
        "GEMINI_BASE_URL": fake_gemini_server.url,
        "GEMINI_API_KEY": GEMINI_TEST_KEY,
        "PLATFORM_FALLBACK_ORDER": "openai,anthropic,gemini",
        "PLATFORM_REQUEST_TIMEOUT": "60",
        "RETRY_BASE_DELAY": "0.01",
        "RETRY_MAX_DELAY": "0.05",
    }
    env = {**provider_env, **{key: str(value) for key, value in WORKER_TIMING.items()}}
    # Celery reads the CELERY_BROKER_URL environment variable before its own configuration: point both at
    # the test broker, or this process would publish where no test worker listens.
    saved_broker = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = REDIS_TEST_URL
    celery_app.conf.update(
        broker_url=REDIS_TEST_URL,
        broker_transport_options={
            **celery_app.conf.broker_transport_options,
            "global_keyprefix": BROKER_PREFIX,
        },
    )
    factory = WorkerFactory(
        redis_url=REDIS_TEST_URL, prefix=BROKER_PREFIX, log_dir=tmp_path_factory.mktemp("workers"), env=env
    )
    try:
        yield factory
    finally:
        factory.stop_all()
        if saved_broker is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_broker


@pytest.fixture
def broker(worker_factory: WorkerFactory, settings) -> WorkerFactory:
    """This test publishes background runs to the workers' broker, and reads their events."""
    settings.CELERY_BROKER_URL = REDIS_TEST_URL
    settings.REDIS_URL = REDIS_TEST_URL
    settings.REDIS_KEY_PREFIX = BROKER_PREFIX
    for key, value in WORKER_TIMING.items():
        setattr(settings, key, value)
    return worker_factory


@pytest.fixture
def worker(broker: WorkerFactory) -> WorkerProcess:
    """The session's worker (started once: a worker takes seconds to start on a small machine)."""
    return broker.shared()


@pytest.fixture
def own_workers(broker: WorkerFactory) -> WorkerFactory:
    """For a test that starts (and kills) its own workers: nobody else may consume its messages."""
    broker.stop_shared()
    return broker


# ---------------------------------------------------------------- RabbitMQ as the broker

RABBITMQ_TEST_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _use_broker(url: str) -> None:
    """Point this process's Celery app at `url` (Celery reads CELERY_BROKER_URL from the environment before
    its configuration), and drop the producer pools built for the previous broker."""
    from config.celery import app as celery_app

    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    # kombu keeps pools per connection in process-wide groups that a later lookup for an equal broker
    # would find: close and forget them all.
    kombu.pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def rabbitmq(broker: WorkerFactory, settings) -> Iterator[WorkerFactory]:
    """This test queues its runs to RabbitMQ (the default vhost, under queue names of its own, deleted after);
    events and cancel notices stay in the test Redis. Returns a factory of workers on that broker."""

    try:
        with kombu.Connection(RABBITMQ_TEST_URL, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"these tests need RabbitMQ at {RABBITMQ_TEST_URL}: {exc}")
    tag = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}"
    queues = {"RUNS_QUEUE": f"{tag}:runs", "MAINTENANCE_QUEUE": f"{tag}:maintenance"}
    for key, value in queues.items():
        setattr(settings, key, value)
    settings.CELERY_BROKER_URL = RABBITMQ_TEST_URL
    _use_broker(RABBITMQ_TEST_URL)
    factory = WorkerFactory(
        redis_url=REDIS_TEST_URL,
        broker_url=RABBITMQ_TEST_URL,
        prefix=BROKER_PREFIX,
        log_dir=broker.log_dir,
        env={**broker.base_env, **queues},
    )
    try:
        yield factory
    finally:
        factory.stop_all()
        with kombu.Connection(RABBITMQ_TEST_URL, connect_timeout=5) as connection:
            for queue in queues.values():
                channel = connection.channel()
                with contextlib.suppress(*connection.channel_errors):  # never declared
                    channel.queue_delete(queue)
                with contextlib.suppress(Exception):
                    channel.close()
        _use_broker(REDIS_TEST_URL)
