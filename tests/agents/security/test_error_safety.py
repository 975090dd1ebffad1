"""Errors shown to users are safe: model file paths and raw exception text stay in the log (with the
execution id); the execute response and the execution's record carry a stable message and code."""

from __future__ import annotations

import logging

import pytest

from apps.platforms.local import LocalPlatform
from apps.platforms.pricing import Pricing
from apps.platforms.registry import PlatformRegistry, installed_registry, set_registry
from tests.agents.api.conftest import post_json
from tests.factories import AgentFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db

MARKER = "MARKER-9c1e-private"


@pytest.fixture
def missing_local_model(tmp_path):
    """A registry whose only platform is the local model, pointed at a file that does not exist."""
    path = tmp_path / MARKER / "model.gguf"
    registry = PlatformRegistry(
        {"local": LocalPlatform(model_path=str(path), default_model="smollm2", n_ctx=512, n_threads=1)},
        fallback_order=("local",),
        pricing=Pricing(),
    )
    previous = installed_registry()
    set_registry(registry)
    yield path
    set_registry(previous)


def _run_and_detail(client, slug: str) -> tuple[dict, str, str]:  # type: ignore[no-untyped-def]
    response = post_json(client, f"/api/v1/agents/{slug}/execute/", {"input_data": {"task": "hi"}})
    assert response.status_code == 502, response.content
    body = response.json()
    detail = client.get(f"/api/v1/executions/{body['execution_id']}/")
    assert detail.status_code == 200
    return body, response.content.decode(), detail.content.decode()


def _logged_with_id(caplog, text: str, execution_id: str) -> bool:  # type: ignore[no-untyped-def]
    return any(
        text in record.getMessage() and getattr(record, "execution_id", None) == execution_id
        for record in caplog.records
    )


def test_a_local_model_path_stays_in_the_log(missing_local_model, alice, alice_client, caplog):
    AgentFactory(owner=alice, agent_id="local-helper", preferred_platform="local", model="", max_retries=0)
    caplog.set_level(logging.WARNING)

    body, response_text, detail_text = _run_and_detail(alice_client, "local-helper")

    assert body["success"] is False
    assert body["error"]["code"] == "provider_error"
    assert "the platform is not available (details are in the server log)" in body["error"]["message"]
    for text in (response_text, detail_text):
        assert MARKER not in text and str(missing_local_model.parent) not in text
    assert _logged_with_id(caplog, MARKER, body["execution_id"])


def test_a_path_or_raw_exception_in_a_provider_error_is_not_shown(
    fake_registry, fake_openai, bob, bob_client, caplog
):
    AgentFactory(owner=bob, agent_id="helper", preferred_platform="openai", max_retries=0)
    fake_openai.fail(Fault("status", status=400, message=f"cannot open /srv/private/{MARKER}/weights.bin"))
    caplog.set_level(logging.WARNING)

    body, response_text, detail_text = _run_and_detail(bob_client, "helper")

    assert body["error"]["message"] == (
        "openai 400 bad_request: the platform could not serve this request (details are in the server log)"
    )
    assert MARKER not in response_text and MARKER not in detail_text
    assert _logged_with_id(caplog, MARKER, body["execution_id"])


def test_an_ordinary_provider_message_is_still_shown(fake_registry, fake_openai, bob, bob_client):
    AgentFactory(owner=bob, agent_id="helper", preferred_platform="openai", max_retries=0)
    fake_openai.fail(Fault("status", status=400, message="temperature must be at most 2"))

    body, _, _ = _run_and_detail(bob_client, "helper")

    assert "temperature must be at most 2" in body["error"]["message"]
