"""config/asgi.py: each request still runs its sync work on a thread of its own, and that thread is reused by
later requests instead of being started (and joined by another new thread) for every request; a request's start
makes no thread hop for Django's connection checks when no connection outlives a request."""

from __future__ import annotations

import asyncio
import threading
from unittest.mock import Mock

import httpx
import pytest
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections, connections, reset_queries
from django.dispatch import dispatcher

from apps.agents.api import views
from config.asgi import PooledThreadsASGIHandler, application, skip_start_checks_under_asgi

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def health_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """For each health request: the thread its sync view ran on, and whether that thread served before."""
    seen: list[tuple[int, bool]] = []
    served = threading.local()
    real = views.health_check

    def recording():  # type: ignore[no-untyped-def]
        seen.append((threading.get_ident(), getattr(served, "before", False)))
        served.before = True
        return real()

    monkeypatch.setattr(views, "health_check", recording)
    return seen


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1")


async def test_sequential_requests_reuse_one_request_thread(health_threads):
    async with client() as http:
        await http.get("/api/v1/health/")  # the first may start a thread
        started = threading.active_count()
        for _ in range(5):
            assert (await http.get("/api/v1/health/")).status_code == 200
        assert threading.active_count() == started  # nothing started, nothing joined

    assert all(before for _, before in health_threads[1:])  # a thread that had served a request already
    assert health_threads[0][0] != threading.get_ident()  # not the event loop's thread


async def test_concurrent_requests_each_have_their_own_thread(monkeypatch):
    # Both views must be inside at once to pass the barrier: on one shared thread they would deadlock.
    barrier = threading.Barrier(2, timeout=10)
    real = views.health_check

    def meeting():  # type: ignore[no-untyped-def]
        barrier.wait()
        return real()

    monkeypatch.setattr(views, "health_check", meeting)
    async with client() as http:
        answers = await asyncio.gather(http.get("/api/v1/health/"), http.get("/api/v1/health/"))
    assert [answer.status_code for answer in answers] == [200, 200]


async def test_a_request_start_makes_no_thread_hop_for_the_connection_checks(monkeypatch):
    # The test client puts close_old_connections back for every sender after each of its requests; this is
    # the state config/asgi.py leaves a server process in.
    assert skip_start_checks_under_asgi()
    hops = Mock(wraps=dispatcher.sync_to_async)
    monkeypatch.setattr(dispatcher, "sync_to_async", hops)
    async with client() as http:
        assert (await http.get("/api/v1/health/")).status_code == 200
    assert hops.call_args_list == []  # Signal.asend hops only for sync receivers

    sync_for_asgi, _ = signals.request_started._live_receivers(PooledThreadsASGIHandler)
    sync_for_wsgi, _ = signals.request_started._live_receivers(WSGIHandler)
    assert not {close_old_connections, reset_queries} & set(sync_for_asgi)
    assert {close_old_connections, reset_queries} <= set(sync_for_wsgi)  # runserver keeps Django's checks


def test_persistent_connections_keep_the_checks(monkeypatch):
    # With CONN_MAX_AGE, a request thread may hold a connection from its previous request: Django's checks stay.
    from django.conf import settings

    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 60)
    monkeypatch.setattr(signals.request_started, "receivers", list(signals.request_started.receivers))
    signals.request_started.connect(close_old_connections)
    assert not skip_start_checks_under_asgi()
    sync_for_asgi, _ = signals.request_started._live_receivers(PooledThreadsASGIHandler)
    assert close_old_connections in sync_for_asgi


async def test_a_request_thread_holds_no_open_connection_when_the_next_request_starts():
    """What skipping the start checks rests on: every request gives its thread's connections back at its end,
    so the next request on that (reused) thread starts with none open, on SQLite as with the pool."""
    open_at_start: list[int] = []

    def probe(**kwargs):  # type: ignore[no-untyped-def]
        open_at_start.append(sum(c.connection is not None for c in connections.all(initialized_only=True)))

    signals.request_started.connect(probe, sender=PooledThreadsASGIHandler)
    try:
        async with client() as http:
            for path in ["/api/v1/health/", "/api/v1/agents/", "/api/v1/health/"] * 3:
                assert (await http.get(path)).status_code in (200, 401)
    finally:
        signals.request_started.disconnect(probe, sender=PooledThreadsASGIHandler)
    assert open_at_start == [0] * 9
