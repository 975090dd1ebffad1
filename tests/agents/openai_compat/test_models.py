"""GET /v1/models (and /v1/models/{id}) through the openai SDK: the agents the caller may use, nobody else's."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.agents.openai_compat.conftest import token_for
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def agents(alice, bob):  # type: ignore[no-untyped-def]
    AgentFactory(owner=alice, agent_id="alices-own")
    AgentFactory(owner=alice, agent_id="alices-retired", is_active=False)
    AgentFactory(owner=bob, agent_id="bobs-private")
    AgentFactory(owner=bob, agent_id="bobs-shared", is_shared=True)
    AgentFactory(owner=None, agent_id="catalog-agent", is_shared=True)


def test_alice_sees_her_agents_and_shared_ones_but_not_bobs_private_one(client_for, agents, alice):
    models = client_for(alice).models.list()

    by_id = {model.id: model for model in models.data}
    assert sorted(by_id) == ["alices-own", "bobs-shared", "catalog-agent"]
    assert {model.object for model in models.data} == {"model"}
    assert (by_id["alices-own"].owned_by, by_id["bobs-shared"].owned_by) == ("alice", "shared")
    assert by_id["catalog-agent"].owned_by == "system"
    assert all(isinstance(model.created, int) for model in models.data)


def test_bob_sees_his_own_private_agent(client_for, agents, bob):
    ids = {model.id for model in client_for(bob).models.list()}
    assert ids == {"bobs-private", "bobs-shared", "catalog-agent"}


def test_staff_see_every_active_agent(client_for, agents):
    staff = UserFactory(username="staff", is_staff=True)
    ids = {model.id for model in client_for(staff).models.list()}
    assert ids == {"alices-own", "bobs-private", "bobs-shared", "catalog-agent"}


def test_retrieve_one_model(client_for, agents, alice):
    client = client_for(alice)
    assert client.models.retrieve("bobs-shared").id == "bobs-shared"
    for hidden in ("bobs-private", "alices-retired", "nope"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(hidden)


def test_models_need_a_token(client_for, agents, alice):
    with pytest.raises(openai.AuthenticationError):
        client_for(alice, api_key="wrong").models.list()


def test_without_any_key_the_answer_says_how_to_send_one(live_server_url, agents):
    response = httpx.get(f"{live_server_url}/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("You didn't provide an API key")


def test_the_token_scheme_works_too(live_server_url, agents, alice):
    response = httpx.get(
        f"{live_server_url}/v1/models", headers={"Authorization": f"Token {token_for(alice)}"}
    )
    assert response.status_code == 200 and len(response.json()["data"]) == 3


def test_unknown_v1_paths_and_wrong_methods_answer_in_openai_shape(live_server_url, alice):
    headers = {"Authorization": f"Bearer {token_for(alice)}"}
    missing = httpx.post(f"{live_server_url}/v1/completions", headers=headers, json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    wrong_method = httpx.get(f"{live_server_url}/v1/chat/completions", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}


def test_a_body_that_is_not_json_is_400(live_server_url, alice):
    response = httpx.post(
        f"{live_server_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token_for(alice)}", "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
