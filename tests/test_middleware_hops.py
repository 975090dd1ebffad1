"""config/middleware.py: under ASGI, Django's middleware hooks run on the event loop, not one thread hop each."""

from __future__ import annotations

import httpx
import pytest
from django.utils import deprecation

from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_api_request_makes_no_thread_hop_in_the_middleware(monkeypatch):
    # Django's MiddlewareMixin sends each process_request / process_response through this name.
    hops: list[object] = []
    real = deprecation.sync_to_async

    def counting(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func)
        return real(func, *args, **kwargs)

    monkeypatch.setattr(deprecation, "sync_to_async", counting)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/api/v1/agents/")

    assert response.status_code == 401  # went through the whole stack, to DRF's authentication
    assert response.headers["x-frame-options"] == "DENY"  # the inline hooks did run
    assert "nosniff" in response.headers["x-content-type-options"]
    assert hops == []
