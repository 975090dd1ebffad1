"""Sharing is a privilege: only staff, or users holding `agents.share_agent`, make an agent visible to every
user; a shared agent is changed only by them; the catalog's slugs are reserved. Over HTTP, with two
non-staff users, alice and bob."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from apps.agents.catalog import load_catalog
from apps.agents.catalog.slugs import catalog_slugs
from apps.agents.models import Agent
from tests.agents.api.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

AGENT = {"name": "Alice's helper", "agent_id": "alices-helper", "system_prompt": "Be helpful."}


@pytest.fixture
def alice_api(alice) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(bob)


@pytest.fixture
def staff_api(db) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(UserFactory(username="root", is_staff=True))


def slugs_seen_by(client: APIClient) -> set[str]:
    agents = {agent["agent_id"] for agent in client.get("/api/v1/agents/").json()["results"]}
    models = {model["id"] for model in client.get("/v1/models").json()["data"]}
    assert agents == models  # the API's list and the OpenAI facade's agree
    return agents


def assert_share_refused(response, field: str = "is_shared") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert list(error["fields"]) == [field]
    assert "agents.share_agent" in error["message"]


def test_bob_never_sees_alices_agents_unless_staff_shared_them(alice_api, bob_api, staff_api) -> None:
    assert alice_api.post("/api/v1/agents/", AGENT, format="json").status_code == 201
    assert "alices-helper" not in slugs_seen_by(bob_api)
    assert bob_api.get("/api/v1/agents/alices-helper/").status_code == 404

    # alice cannot publish it herself, either way...
    assert_share_refused(alice_api.patch("/api/v1/agents/alices-helper/", {"is_shared": True}, format="json"))
    assert "alices-helper" not in slugs_seen_by(bob_api)

    # ...staff can.
    shared = staff_api.patch("/api/v1/agents/alices-helper/", {"is_shared": True}, format="json")
    assert shared.status_code == 200 and shared.json()["is_shared"] is True
    assert "alices-helper" in slugs_seen_by(bob_api)
    assert bob_api.get("/api/v1/agents/alices-helper/").status_code == 200


def test_a_non_staff_user_cannot_create_a_shared_agent(alice_api, bob_api) -> None:
    response = alice_api.post("/api/v1/agents/", {**AGENT, "is_shared": True}, format="json")

    assert_share_refused(response)
    assert not Agent.objects.filter(agent_id="alices-helper").exists()  # nothing half-written
    assert "alices-helper" not in slugs_seen_by(bob_api)
    # Saying "not shared" is fine.
    assert alice_api.post("/api/v1/agents/", {**AGENT, "is_shared": False}, format="json").status_code == 201


def test_the_share_permission_lets_a_non_staff_user_share(alice, bob_api) -> None:
    alice.user_permissions.add(
        Permission.objects.get(codename="share_agent", content_type__app_label="agents")
    )
    alice_api = client_for(type(alice).objects.get(pk=alice.pk))  # permissions are cached per instance

    response = alice_api.post("/api/v1/agents/", {**AGENT, "is_shared": True}, format="json")

    assert response.status_code == 201, response.content
    assert "alices-helper" in slugs_seen_by(bob_api)


def test_the_owner_of_a_shared_agent_cannot_change_what_everyone_runs(alice_api, bob_api, staff_api) -> None:
    alice_api.post("/api/v1/agents/", AGENT, format="json")
    staff_api.patch("/api/v1/agents/alices-helper/", {"is_shared": True}, format="json")

    response = alice_api.patch(
        "/api/v1/agents/alices-helper/", {"system_prompt": "Leak everything."}, format="json"
    )

    assert_share_refused(response, field="system_prompt")
    assert Agent.objects.get(agent_id="alices-helper").system_prompt == "Be helpful."
    # Taking it back from everyone is hers to do; publishing it again is not.
    assert (
        alice_api.patch("/api/v1/agents/alices-helper/", {"is_shared": False}, format="json").status_code
        == 200
    )
    assert "alices-helper" not in slugs_seen_by(bob_api)
    assert_share_refused(alice_api.patch("/api/v1/agents/alices-helper/", {"is_shared": True}, format="json"))


def test_catalog_slugs_are_reserved_even_before_the_catalog_is_seeded(alice_api, staff_api) -> None:
    assert not Agent.objects.exists()  # not seeded
    assert catalog_slugs() == {entry.agent_id for entry in load_catalog()}

    for client in (alice_api, staff_api):
        response = client.post("/api/v1/agents/", {**AGENT, "agent_id": "code-reviewer"}, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["error"]["fields"] == {
            "agent_id": ["This agent_id is reserved for the built-in catalog."]
        }
    assert not Agent.objects.exists()

    # Nor can an agent be renamed to one.
    alice_api.post("/api/v1/agents/", AGENT, format="json")
    renamed = alice_api.patch(
        "/api/v1/agents/alices-helper/", {"agent_id": "technical-writer"}, format="json"
    )
    assert renamed.status_code == 400
    assert list(renamed.json()["error"]["fields"]) == ["agent_id"]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
