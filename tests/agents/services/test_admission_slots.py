"""Run requests are admitted a few at a time (apps/agents/services/db.py, admission_slot): at most
RUN_ADMISSIONS DRF halves of run requests run at once per process, the rest wait on the event loop, and one
that gets no slot in time is a 503 `overloaded` with Retry-After, never a 500."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from apps.agents.services import db
from tests.agents.api.conftest import token_for
from tests.agents.services.test_unit_slots import declare_pool, peak_inside
from tests.factories import AgentFactory, UserFactory


async def test_at_most_run_admissions_at_once(settings):
    settings.RUN_ADMISSIONS = 3
    assert await peak_inside(db.admission_slot, 12) == 3


async def test_zero_admits_every_run_at_once(settings):
    settings.RUN_ADMISSIONS = 0
    assert await peak_inside(db.admission_slot, 12) == 12


async def busy_client(settings) -> AsyncClient:  # type: ignore[no-untyped-def]
    # Made here, in this transactional test's database, where the request's thread sees them.
    alice = await sync_to_async(UserFactory)(username="alice")
    await sync_to_async(AgentFactory)(owner=alice, agent_id="busy", preferred_platform="openai")
    token = await sync_to_async(token_for)(alice)
    settings.RUN_ADMISSIONS = 1
    return AsyncClient(headers={"Authorization": f"Token {token}"}, raise_request_exception=False)


@pytest.mark.django_db(transaction=True)
async def test_an_execute_without_an_admission_slot_is_a_503_with_retry_after(settings, monkeypatch):
    client = await busy_client(settings)
    declare_pool(monkeypatch)  # its timeout (0.2 s) is the admission's wait
    async with db.admission_slot():  # the process's one admission slot taken
        response = await client.post(
            "/api/v1/agents/busy/execute/", {"input_data": {"task": "hi"}}, content_type="application/json"
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)


@pytest.mark.django_db(transaction=True)
async def test_a_chat_completion_without_an_admission_slot_is_a_503_with_retry_after(
    alice, settings, monkeypatch
):
    client = await busy_client(settings)
    declare_pool(monkeypatch)
    async with db.admission_slot():
        response = await client.post(
            "/v1/chat/completions",
            {"model": "busy", "messages": [{"role": "user", "content": "hi"}]},
            content_type="application/json",
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response["Retry-After"] == str(db.OVERLOADED_RETRY_AFTER_SECONDS)


@pytest.mark.django_db(transaction=True)
async def test_a_plain_get_does_not_wait_for_an_admission_slot(settings, monkeypatch):
    client = await busy_client(settings)
    monkeypatch.setattr(db, "ADMISSION_TIMEOUT_SECONDS", 0.2)  # a wait would be a 503 (no pool here)
    async with db.admission_slot():
        health = await client.get("/api/v1/health/")
    assert health.status_code == 200
