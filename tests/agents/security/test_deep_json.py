"""A deeply nested or oversized JSON body is a 400 with the error envelope on every endpoint, never a 500.

Before the bounded parser, 100 KB of `[[[[...` raised RecursionError inside json.loads (DRF's JSONParser and
the OpenAI-compatible views alike): a 500 on /api/v1/auth/token/, on execute and on /v1/chat/completions.
"""

from __future__ import annotations

import pytest
from django.test import Client

from apps.agents.api.parsers import JSONTooDeep, loads_bounded
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

BRACKETS = b"[" * 100_000
#: Deep enough to break what walks it next, shallow enough for json.loads itself (MAX_JSON_DEPTH is 64).
JUST_TOO_DEEP = b'{"input_data": {"task": "x", "extra": ' + b"[" * 80 + b"]" * 80 + b"}}"

API_ENDPOINTS = [
    ("POST", "/api/v1/auth/token/"),
    ("POST", "/api/v1/agents/"),
    ("PATCH", "/api/v1/agents/helper/"),
    ("POST", "/api/v1/agents/helper/execute/"),
    ("POST", "/api/v1/conversations/"),
]


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0)


@pytest.mark.parametrize("body", [BRACKETS, JUST_TOO_DEEP], ids=["100KB-of-brackets", "depth-80"])
@pytest.mark.parametrize(("method", "path"), API_ENDPOINTS)
def test_deep_json_is_a_400_envelope_on_every_api_endpoint(
    fake_registry, alice_client, agent, method, path, body
):
    response = alice_client.generic(method, path, body, content_type="application/json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] in ("parse_error", "too_deep"), error
    assert "nested deeper than 64 levels" in error["message"]


@pytest.mark.parametrize("body", [BRACKETS, JUST_TOO_DEEP], ids=["100KB-of-brackets", "depth-80"])
def test_deep_json_is_a_400_on_chat_completions(fake_registry, fake_openai, alice, agent, body):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(alice)}")

    response = client.generic("POST", "/v1/chat/completions", body, content_type="application/json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "nested deeper than 64 levels" in error["message"]
    assert fake_openai.requests == []


def test_an_ordinary_nested_body_still_runs(fake_registry, fake_openai, alice_client, agent):
    fake_openai.reply(text="fine")
    body = b'{"input_data": {"task": "x", "extra": ' + b"[" * 20 + b"]" * 20 + b"}}"

    response = alice_client.generic(
        "POST", "/api/v1/agents/helper/execute/", body, content_type="application/json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["output"] == "fine"


def test_the_depth_limit_is_a_setting(settings):
    settings.MAX_JSON_DEPTH = 3
    assert loads_bounded(b"[[[1]]]") == [[[1]]]
    with pytest.raises(JSONTooDeep):
        loads_bounded(b"[[[[1]]]]")
    with pytest.raises(JSONTooDeep):
        loads_bounded('{"a": {"b": {"c": {"d": 1}}}}')
