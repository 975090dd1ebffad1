"""Agents CRUD: `{id}` is the slug or the UUID; model validation answers 400 naming the field; visibility
(own + shared, staff all) and write access (owner or staff)."""

from __future__ import annotations

import pytest

from apps.agents.models import Agent
from tests.agents.api.conftest import post_json
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db

NEW_AGENT = {
    "name": "Code Helper",
    "agent_id": "code-helper",
    "description": "Writes small functions.",
    "system_prompt": "You write Python.",
    "preferred_platform": "openai",
    "model": "gpt-4o-mini",
    "temperature": 0.2,
    "capabilities": ["code"],
    "tools": ["calculator"],
    "output_schema": {"type": "object", "properties": {"code": {"type": "string"}}},
}


def test_create_returns_201_with_the_agent_owned_by_the_caller(alice_client, alice):
    response = alice_client.post("/api/v1/agents/", NEW_AGENT, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["agent_id"] == "code-helper"
    assert body["owner"] == "alice"
    assert body["temperature"] == 0.2
    agent = Agent.objects.get(agent_id="code-helper")
    assert agent.owner == alice and str(agent.pk) == body["id"]


def test_an_integral_number_is_an_integer_as_in_json_schema(alice_client):
    # The schema is OpenAPI 3.1 (JSON Schema 2020-12), where 60.0 is the integer 60: a client or fuzzer that
    # sends it must not get a 400 for a value the schema allows.
    response = alice_client.post("/api/v1/agents/", {**NEW_AGENT, "timeout_seconds": 60.0}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["timeout_seconds"] == 60


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),  # a string is not a number
        ({"agent_id": "Not A Slug"}, "agent_id"),
        ({"agent_id": "a--b"}, "agent_id"),
        ({"output_schema": {"type": "not-a-type"}}, "output_schema"),
        ({"output_schema": ["not", "an", "object"]}, "output_schema"),
        ({"capabilities": "code"}, "capabilities"),
        ({"capabilities": [1, 2]}, "capabilities[0]"),
        ({"is_shared": "yes"}, "is_shared"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"name": 123}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "a\ud800b"}, "name"),
        ({"system_prompt": "x\x00"}, "system_prompt"),
        ({"output_schema": {"type": "object", "description": "nul\x00here"}}, "output_schema.description"),
        ({"agent_type": "robot"}, "agent_type"),
        ({"agent_type": "\ud800"}, "agent_type"),  # echoed in the message: must still render
        ({"owner": 1}, "owner"),
        ({"temprature": 0.5}, "temprature"),
    ],
)
def test_invalid_agents_are_400_naming_the_field_and_write_nothing(alice_client, change, field):
    response = post_json(alice_client, "/api/v1/agents/", {**NEW_AGENT, **change})

    error = assert_envelope(response, 400, "invalid")
    assert field in error["fields"], error
    assert not Agent.objects.exists()


def test_missing_required_fields_are_named(alice_client):
    error = assert_envelope(alice_client.post("/api/v1/agents/", {}, format="json"), 400, "invalid")
    assert {"name", "agent_id"} <= set(error["fields"])


def test_a_taken_slug_is_409_on_agent_id(alice_client, bob):
    AgentFactory(owner=bob, agent_id="code-helper")
    error = assert_envelope(alice_client.post("/api/v1/agents/", NEW_AGENT, format="json"), 409, "conflict")
    assert "agent_id" in error["fields"]


def test_the_model_rules_apply_even_when_called_without_the_serializer(alice):
    """The service runs full_clean: the model is the one source of the rules."""
    from apps.agents.errors import ApplicationError
    from apps.agents.services.agents import agent_create

    with pytest.raises(ApplicationError) as raised:
        agent_create(owner=alice, data={"name": "x", "agent_id": "x", "temperature": 9})
    assert raised.value.status == 400 and "temperature" in raised.value.fields


def test_get_by_slug_and_by_uuid(alice_client, alice):
    agent = AgentFactory(owner=alice, agent_id="reviewer")

    by_slug = alice_client.get("/api/v1/agents/reviewer/")
    by_pk = alice_client.get(f"/api/v1/agents/{agent.pk}/")

    assert by_slug.status_code == by_pk.status_code == 200
    assert by_slug.json() == by_pk.json()


@pytest.mark.parametrize(
    "key", ["no-such-agent", "00000000-0000-0000-0000-000000000000", "bad%00key", "x" * 500]
)
def test_an_unknown_or_impossible_id_is_404(alice_client, key):
    assert_envelope(alice_client.get(f"/api/v1/agents/{key}/"), 404, "not_found")


def test_list_shows_own_and_shared_active_agents_only(alice_client, alice, bob):
    AgentFactory(owner=alice, agent_id="mine")
    AgentFactory(owner=alice, agent_id="mine-inactive", is_active=False)
    AgentFactory(owner=bob, agent_id="bobs-private")
    AgentFactory(owner=bob, agent_id="bobs-shared", is_shared=True)
    AgentFactory(owner=bob, agent_id="bobs-shared-inactive", is_shared=True, is_active=False)
    AgentFactory(owner=None, agent_id="catalog", is_shared=True)

    body = alice_client.get("/api/v1/agents/").json()

    assert sorted(a["agent_id"] for a in body["results"]) == [
        "bobs-shared",
        "catalog",
        "mine",
        "mine-inactive",
    ]
    assert {"next", "previous", "results"} <= set(body)


def test_staff_see_every_agent(staff_client, alice, bob):
    AgentFactory(owner=alice, agent_id="a1")
    AgentFactory(owner=bob, agent_id="b1", is_active=False)
    ids = {a["agent_id"] for a in staff_client.get("/api/v1/agents/").json()["results"]}
    assert ids == {"a1", "b1"}


def test_list_is_cursor_paginated(alice_client, alice):
    for i in range(5):
        AgentFactory(owner=alice, agent_id=f"agent-p{i}", name=f"Agent {i}")

    first = alice_client.get("/api/v1/agents/?page_size=2").json()
    second = alice_client.get(first["next"]).json()
    third = alice_client.get(second["next"]).json()

    seen = [a["agent_id"] for page in (first, second, third) for a in page["results"]]
    assert seen == [f"agent-p{i}" for i in range(5)]
    assert third["next"] is None


def test_an_invalid_cursor_is_404(alice_client):
    assert_envelope(alice_client.get("/api/v1/agents/?cursor=garbage"), 404, "not_found")


def test_a_hostile_cursor_is_a_4xx_never_a_500(alice_client):
    """What the schema says of the cursor (any text without NUL): anything else that is no cursor of ours
    is a 404, a NUL a 400 naming the field."""
    for cursor in ("A" * 100_000, "%2Fetc%2Fpasswd", "cD0yMDI2LTEyLTAy%26r%3D1", "%F0%9F%98%8D" * 1000):
        response = alice_client.get(f"/api/v1/executions/?cursor={cursor}")
        assert response.status_code in (200, 404), (cursor[:20], response.status_code)
    error = assert_envelope(alice_client.get("/api/v1/executions/?cursor=a%00b"), 400, "invalid")
    assert "cursor" in error["fields"]


def test_patch_updates_only_the_given_fields(alice_client, alice):
    agent = AgentFactory(owner=alice, agent_id="patch-me", temperature=0.5, name="Before")

    response = alice_client.patch("/api/v1/agents/patch-me/", {"name": "After"}, format="json")

    assert response.status_code == 200, response.content
    agent.refresh_from_db()
    assert (agent.name, agent.temperature) == ("After", 0.5)


def test_patch_validates_like_create(alice_client, alice):
    agent = AgentFactory(owner=alice, agent_id="patch-me", temperature=0.5)
    error = assert_envelope(
        alice_client.patch("/api/v1/agents/patch-me/", {"temperature": 3}, format="json"), 400, "invalid"
    )
    assert "temperature" in error["fields"]
    agent.refresh_from_db()
    assert agent.temperature == 0.5


def test_put_is_not_allowed(alice_client, alice):
    AgentFactory(owner=alice, agent_id="mine")
    assert_envelope(
        alice_client.put("/api/v1/agents/mine/", NEW_AGENT, format="json"), 405, "method_not_allowed"
    )


def test_delete_removes_the_agent_and_keeps_its_executions(alice_client, alice):
    agent = AgentFactory(owner=alice, agent_id="bye")
    execution = ExecutionFactory(agent=agent, user=alice)

    assert alice_client.delete("/api/v1/agents/bye/").status_code == 204

    assert not Agent.objects.filter(pk=agent.pk).exists()
    execution.refresh_from_db()
    assert execution.agent is None and execution.agent_slug == "bye"


def test_a_shared_agent_is_readable_but_not_writable_by_others(bob_client, alice):
    AgentFactory(owner=alice, agent_id="shared", is_shared=True)

    assert bob_client.get("/api/v1/agents/shared/").status_code == 200
    assert_envelope(
        bob_client.patch("/api/v1/agents/shared/", {"name": "mine now"}, format="json"),
        403,
        "permission_denied",
    )
    assert_envelope(bob_client.delete("/api/v1/agents/shared/"), 403, "permission_denied")
    assert Agent.objects.get(agent_id="shared").name != "mine now"


def test_staff_may_change_anyones_agent(staff_client, alice):
    AgentFactory(owner=alice, agent_id="theirs")
    assert staff_client.patch("/api/v1/agents/theirs/", {"name": "Fixed"}, format="json").status_code == 200
    assert staff_client.delete("/api/v1/agents/theirs/").status_code == 204
