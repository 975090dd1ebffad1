"""config/middleware.py: under ASGI, Django's middleware hooks run on the event loop, not one thread hop each."""

from __future__ import annotations

from unittest.mock import Mock

import httpx
import pytest
from django.utils import deprecation

from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_api_request_makes_no_thread_hop_in_the_middleware(monkeypatch):
    # Django's MiddlewareMixin sends each process_request / process_response through this name.
    hops = Mock(wraps=deprecation.sync_to_async)
    monkeypatch.setattr(deprecation, "sync_to_async", hops)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/api/v1/agents/")

    assert response.status_code == 401  # went through the whole stack, to DRF's authentication
    assert response.headers["x-frame-options"] == "DENY"  # the inline hooks did run
    assert "nosniff" in response.headers["x-content-type-options"]
    assert hops.call_args_list == []


async def test_a_run_request_is_rendered_on_the_loop_without_a_thread_hop(
    monkeypatch, fake_registry, fake_openai, alice
):
    """The execute answer is JSON written on the event loop (api/deferred.py rendered_json), not rendered by
    Django in a thread hop of its own; the browsable API's HTML, which may query the database, still is."""
    from asgiref.sync import sync_to_async
    from django.core.handlers import base

    from tests.agents.api.conftest import token_for
    from tests.factories import AgentFactory

    await sync_to_async(AgentFactory)(owner=alice, agent_id="helper", preferred_platform="openai")
    token = await sync_to_async(token_for)(alice)
    spy = Mock(wraps=base.sync_to_async)
    monkeypatch.setattr(base, "sync_to_async", spy)

    def hops() -> list[str]:
        return [call.args[0].__name__ for call in spy.call_args_list]

    transport = httpx.ASGITransport(app=application)
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as client:
        response = await client.post("/api/v1/agents/helper/execute/", json={"input_data": {"task": "Hi"}})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["output"] == "Hello from the fake provider."
        assert "render" not in hops()

        refused = await client.post("/api/v1/agents/helper/execute/", json={"input_data": {}})
        assert refused.status_code == 400  # the DRF half's own answer (the error envelope), also JSON
        assert refused.json()["error"]["fields"]
        assert "render" not in hops()

        html = await client.post(
            "/api/v1/agents/helper/execute/",
            json={"input_data": {"task": "Hi"}},
            headers={"Accept": "text/html"},
        )
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert hops().count("render") == 1  # the browsable API's page, rendered by Django in its thread
