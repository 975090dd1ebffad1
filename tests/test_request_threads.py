"""config/asgi.py: each request still runs its sync work on a thread of its own, and that thread is reused by
later requests instead of being started (and joined by another new thread) for every request."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from apps.agents.api import views
from config.asgi import application

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
