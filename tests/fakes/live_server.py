"""`live_server_url`: the project's ASGI app (config.asgi.application) under a real uvicorn on 127.0.0.1, in a
thread of the test process, for tests that need real HTTP: SSE read by a real SSE client, a client that
disconnects mid-stream, schemathesis.

One server for the session. A test that uses it gets `transactional_db`: what the test writes is committed, so
the server's own connections see it (and the test sees what the server wrote), and the tables are emptied
afterwards. Being in the same process, the server also sees whatever the test installed process-wide, such as
the `fake_registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvicorn


class LiveASGIServer:
    def __init__(self) -> None:
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveASGIServer:
        from config.asgi import application

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            application,
            log_level="warning",
            lifespan="off",
            access_log=False,
            loop="asyncio",
            # As `make run` without TRUSTED_PROXIES: X-Forwarded-For is the client's word, not an address.
            proxy_headers=False,
            # Short, so that a test's client going away is noticed and its connection freed promptly.
            timeout_keep_alive=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="live-asgi-server"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def _close_server_connections() -> None:
    """Connections the server opened live in its per-request contexts, which are gone by now; make sure no
    socket is left open to the test database (PostgreSQL refuses to drop a database with sessions on it)."""
    gc.collect()
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def live_asgi_server(django_db_setup: None, django_db_blocker: object) -> Iterator[LiveASGIServer]:
    from django.db import connections

    # Under ASGI every request runs its ORM calls in a thread of its own; a persistent connection would
    # outlive the request that opened it. Close each at the end of its request, as in production (where a
    # connection pool is the way to reuse them).
    settings_dict = connections["default"].settings_dict
    previous_max_age = settings_dict.get("CONN_MAX_AGE", 0)
    settings_dict["CONN_MAX_AGE"] = 0
    server = LiveASGIServer().start()
    try:
        yield server
    finally:
        server.stop()
        settings_dict["CONN_MAX_AGE"] = previous_max_age
        with django_db_blocker.unblock():  # type: ignore[attr-defined]
            _close_server_connections()


@pytest.fixture
def live_server_url(live_asgi_server: LiveASGIServer, transactional_db: None) -> str:
    return live_asgi_server.url


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll `predicate` until it is true (a condition, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def async_wait_until(predicate, limit: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


async def leave_during_admission(
    monkeypatch: pytest.MonkeyPatch,
    send: Callable[[], Awaitable[Any]],
    *,
    while_paused: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Send a run request with `send()` and close its connection once the run's row is written: the server's
    admission pauses half a second right after the row's INSERT (StateManager.create_execution), so the
    client is gone before the run could start. `while_paused()` is awaited before the client leaves."""
    from apps.agents.services.state_manager import StateManager

    written = threading.Event()
    create_execution = StateManager.create_execution

    def paused_create(self, **kwargs):  # type: ignore[no-untyped-def]
        execution = create_execution(self, **kwargs)
        written.set()
        time.sleep(0.5)
        return execution

    monkeypatch.setattr(StateManager, "create_execution", paused_create)
    request = asyncio.ensure_future(send())
    assert await async_wait_until(written.is_set, limit=10), "no row was written"
    if while_paused is not None:
        await while_paused()
    request.cancel()  # closes the connection
    with contextlib.suppress(asyncio.CancelledError):
        await request
