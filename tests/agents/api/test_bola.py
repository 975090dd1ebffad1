"""Broken object-level authorization: bob gets 404 (never 403, never the object) for every route that names
one of alice's objects, by slug and by UUID; nothing of alice's changes. Staff see everything."""

from __future__ import annotations

import pytest
from django.urls import URLPattern

from apps.agents.api.urls import router
from apps.agents.models import Agent, AgentExecution, Conversation, ExecutionStatus
from tests.agents.api.conftest import post_json
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory, ConversationFactory, ExecutionFactory

pytestmark = pytest.mark.django_db

# (method, url template, body): every route with an object id. {agent} is filled with the slug and the UUID.
OBJECT_ROUTES = [
    ("get", "/api/v1/agents/{agent}/", None),
    ("patch", "/api/v1/agents/{agent}/", {"name": "pwned"}),
    ("delete", "/api/v1/agents/{agent}/", None),
    ("post", "/api/v1/agents/{agent}/execute/", {"input_data": {"task": "hi"}}),
    ("get", "/api/v1/agents/{agent}/stats/", None),
    ("get", "/api/v1/executions/{execution}/", None),
    ("post", "/api/v1/executions/{execution}/cancel/", None),
    ("get", "/api/v1/executions/{execution}/events/", None),
    ("get", "/api/v1/conversations/{conversation}/", None),
    ("delete", "/api/v1/conversations/{conversation}/", None),
]


@pytest.fixture
def alices(alice):  # type: ignore[no-untyped-def]
    agent = AgentFactory(owner=alice, agent_id="alices-agent", name="Alice's")
    conversation = ConversationFactory(owner=alice, agent=agent)
    execution = ExecutionFactory(
        agent=agent, user=alice, status=ExecutionStatus.RUNNING, conversation=conversation
    )
    return {"agent": agent, "conversation": conversation, "execution": execution}


def call(client, method: str, url: str, body):  # type: ignore[no-untyped-def]
    if body is None:
        return getattr(client, method)(url)
    if method == "post":
        return post_json(client, url, body)
    return getattr(client, method)(url, body, format="json")


def urls_for(template: str, objects: dict) -> list[str]:
    if "{agent}" in template:
        agent = objects["agent"]
        return [template.format(agent=agent.agent_id), template.format(agent=agent.pk)]
    return [template.format(execution=objects["execution"].pk, conversation=objects["conversation"].pk)]


def test_the_table_covers_every_object_route_of_the_router():
    routed = set()
    for pattern in router.urls:
        assert isinstance(pattern, URLPattern)
        if "<pk>" in str(pattern.pattern):
            for method, action in pattern.callback.actions.items():
                if method not in ("head", "options"):
                    routed.add((method, str(pattern.pattern).split("/")[0].lstrip("^"), action))
    covered = {(m, t.split("/")[3], t.rstrip("/").split("/")[-1]) for m, t, _ in OBJECT_ROUTES}
    for method, prefix, action in routed:
        suffix = {"retrieve": "{", "partial_update": "{", "destroy": "{"}.get(action, action)
        assert any(m == method and p == prefix and s.startswith(suffix) for m, p, s in covered), (
            method,
            prefix,
            action,
        )


@pytest.mark.parametrize(("method", "template", "body"), OBJECT_ROUTES)
def test_bob_gets_404_for_alices_objects(bob_client, alices, method, template, body):
    for url in urls_for(template, alices):
        response = call(bob_client, method, url, body)
        assert_envelope(response, 404, "not_found")
        assert b"alices-agent" not in response.content

    assert Agent.objects.get(pk=alices["agent"].pk).name == "Alice's"
    assert Conversation.objects.filter(pk=alices["conversation"].pk).exists()
    execution = AgentExecution.objects.get(pk=alices["execution"].pk)
    assert (execution.status, execution.cancel_requested_at) == (ExecutionStatus.RUNNING, None)
    assert AgentExecution.objects.count() == 1  # bob's execute started nothing


def test_bob_cannot_use_alices_conversation_in_his_own_run(bob_client, bob, alices):
    AgentFactory(owner=bob, agent_id="bobs-agent")
    body = {"input_data": {"task": "hi"}, "context": {"conversation_id": str(alices["conversation"].pk)}}
    assert_envelope(post_json(bob_client, "/api/v1/agents/bobs-agent/execute/", body), 404, "not_found")


def test_lists_never_show_alices_objects_to_bob(bob_client, alices):
    assert bob_client.get("/api/v1/agents/").json()["results"] == []
    assert bob_client.get("/api/v1/executions/").json()["results"] == []
    assert bob_client.get(f"/api/v1/executions/?agent={alices['agent'].agent_id}").json()["results"] == []
    assert (
        bob_client.get(f"/api/v1/executions/?conversation={alices['conversation'].pk}").json()["results"]
        == []
    )
    assert bob_client.get("/api/v1/conversations/").json()["results"] == []


def test_a_shared_agent_does_not_share_its_runs(bob_client, alices):
    Agent.objects.filter(pk=alices["agent"].pk).update(is_shared=True)
    assert bob_client.get("/api/v1/agents/alices-agent/").status_code == 200
    assert bob_client.get("/api/v1/executions/?agent=alices-agent").json()["results"] == []
    assert_envelope(bob_client.get(f"/api/v1/executions/{alices['execution'].pk}/"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "template", "body"), [r for r in OBJECT_ROUTES if r[0] == "get" and "events" not in r[1]]
)
def test_staff_see_everyones_objects(staff_client, alices, method, template, body):
    for url in urls_for(template, alices):
        assert call(staff_client, method, url, body).status_code == 200
