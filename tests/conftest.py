"""Shared fixtures. No test reaches the internet: provider traffic goes to fake servers on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

from tests.factories import UserFactory

# Each fake lives in its own module with its own fixtures.
pytest_plugins = [
    "tests.fakes.openai_server",
    "tests.fakes.anthropic_server",
    "tests.fakes.gemini_server",
    "tests.fakes.platform",
    "tests.fakes.live_server",
    "tests.fakes.registry",
]


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection to a non-loopback address, so a misconfigured test cannot call a real provider."""
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost")):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def _embedded_background_by_default(settings) -> None:
    """Background runs execute in-process and events stay in memory unless a test asks for the broker or
    Redis (the `broker`, `worker` and `redis_prefix` fixtures). Otherwise a CELERY_BROKER_URL in the
    environment (CI's PostgreSQL + Redis run) would queue a test's run to a broker no worker reads, and
    build the Celery producer pool before the worker fixtures point it at the test broker."""
    settings.CELERY_BROKER_URL = ""
    settings.REDIS_URL = ""


@pytest.fixture(autouse=True)
def _login_failures_in_the_test_database(settings) -> None:
    """Failed logins are counted in the test database, which each test starts empty, unless a test asks for
    Redis (tests/security/test_logins.py). With REDIS_URL in the environment (CI's second pass) the settings
    count them in Redis, where one test's failures would lock the next test's users out."""
    from axes.handlers.proxy import AxesProxyHandler

    settings.AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
    AxesProxyHandler.get_implementation(force=True)


@pytest.fixture(autouse=True)
def _rate_limit_windows_stand_still(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate limits count in fixed windows (api/throttling.py): a test that makes N + 1 requests against a
    rate of N per minute saw a 200 instead of a 429 whenever a minute ended between its requests. Their clock
    is stopped for each test (30.5 s into a minute, an hour and a day), and only theirs."""
    import types

    from apps.agents.api import throttling

    day = time.time() // 86400 * 86400
    monkeypatch.setattr(throttling, "time", types.SimpleNamespace(time=lambda: day + 30.5))


@pytest.fixture(autouse=True)
def _empty_auth_cache() -> None:
    """Token -> user lookups and agents are cached (apps/agents/api/authentication.py, agent_cache.py), and
    rate limits counted (api/throttling.py); a test starts with none of them."""
    from django.core.cache import caches

    caches["auth"].clear()
    caches["throttle"].clear()


NEAR_TEST_REDIS = "redis://127.0.0.1:6379/13"


@pytest.fixture(params=["in the process's memory", "in Redis with near copies"])
def every_auth_cache(request, settings):
    """The test runs once with the "auth" cache (tokens, agents, budgets) as configured without REDIS_URL and
    once as with it: Redis, each process keeping copies until a change is announced (config/near_cache.py).
    One key prefix per test process: its subscription is made once, and its keys are deleted after each
    test through the cache, so that no copy outlives them."""
    import os

    from django.core.cache import caches

    if request.param == "in the process's memory":
        yield
        return
    prefix = f"near-test-{os.getpid()}"
    settings.CACHES = {
        **settings.CACHES,
        "auth": {
            "BACKEND": "config.near_cache.NearRedisCache",
            "LOCATION": NEAR_TEST_REDIS,
            "KEY_PREFIX": prefix,
        },
    }
    cache = caches["auth"]
    deadline = time.monotonic() + 10
    while not cache._cache.copies.trusted():
        assert time.monotonic() < deadline, "the near cache's subscription was not confirmed"
        time.sleep(0.01)
    yield
    leftovers = [key.decode() for key in cache._cache.get_client(None).keys(f"{prefix}:*")]
    if leftovers:
        cache._cache.delete_many(leftovers)


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


def _close_connection_pools() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):  # type: ignore[no-untyped-def]
    """Django's PostgreSQL connection pool is made on first use for the database NAME of that moment and kept
    per alias for the whole process. Something touches the database before pytest-django creates the test
    database (at collection or setup), so without this the pool, made for the configured database, would
    serve the test database's migrations and every test from the configured one instead. Closing it here,
    before the test database is made, lets the first connection after the switch build it for the test
    database."""
    _close_connection_pools()


@pytest.fixture(autouse=True)
def _final_writes_in_the_test_transaction(request, settings):
    """A test run in a transaction that is rolled back at its end (pytest-django's `db`) keeps its rows from
    every other connection, the writes from the event loop's included (services/db.py): for it a run's final
    write is a unit of database work, on the connection of the test's transaction. Tests whose writes are
    committed (`transaction=True`, `transactional_db`, the live server) write from the loop where the
    settings do (PostgreSQL)."""
    marker = request.node.get_closest_marker("django_db")
    committed = "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction", bool(marker.args and marker.args[0]))
    )
    if not committed:
        settings.DB_ASYNC_WRITERS = 0


ASYNC_WRITES_ONLY = (
    "PostgreSQL only: SQLite has no async driver, so there a run's admission and writes are always units of "
    "database work in a thread (what every other test runs); `.ci/run` runs this test in its PostgreSQL pass"
)


@pytest.fixture
def async_writes_only() -> None:
    """Skips (with its reason) where the event loop sends no writes of its own (services/loop_writes.py)."""
    from apps.agents.services.loop_writes import async_writes

    if not async_writes():
        pytest.skip(ASYNC_WRITES_ONLY)


@pytest.fixture(scope="session", autouse=True)
def _loop_connections_closed_before_the_test_database_is_dropped(django_db_setup):  # type: ignore[no-untyped-def]
    """The idle connections of the writes from the event loop (services/loop_writes.py), of every loop: left open,
    PostgreSQL refuses to drop the test database ("being accessed by other users")."""
    yield
    from apps.agents.services.loop_writes import close_idle_writers

    close_idle_writers(running_too=True)  # the in-process runner's loop and the live server's still run


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that counts connections: hostile schemas point their references at it, and
    a fetch would show as a connection (tests/agents/security/test_schema_policy.py's Listener)."""
    from tests.agents.security.test_schema_policy import Listener

    server = Listener()
    yield server
    server.close()
