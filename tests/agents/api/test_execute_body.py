"""The execute response is `result_body(result)` as it is (api/runs.py), not re-rendered through DRF's fields:
it must stay exactly what AgentExecutionOutputSerializer (the documented schema) renders, for a success and a
failure alike."""

from __future__ import annotations

import pytest

from apps.agents.api.serializers import AgentExecutionOutputSerializer
from tests.agents.api.conftest import post_json
from tests.factories import AgentFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0)


@pytest.mark.parametrize("fails", [False, True], ids=["success", "failure"])
def test_the_body_is_what_the_documented_serializer_renders(
    fake_registry, fake_openai, fake_anthropic, fake_gemini, alice_client, agent, fails
):
    if fails:  # every platform of the fallback chain refuses
        for fake in (fake_openai, fake_anthropic, fake_gemini):
            fake.fail(Fault("status", status=401, message="bad key"), times=3)
    else:
        fake_openai.reply(text="hello", input_tokens=3, output_tokens=1)

    response = post_json(alice_client, "/api/v1/agents/helper/execute/", {"input_data": {"task": "hi"}})

    assert response.status_code == (502 if fails else 200)
    body = response.json()
    assert ("error" in body) is fails
    assert AgentExecutionOutputSerializer(body).data == body  # no key it would drop, none it would change
