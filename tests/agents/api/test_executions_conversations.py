"""Executions (list with filters and cursor pagination, detail with attempts, cancel), per-agent stats, and
conversations (list, create, detail with messages and summary, delete)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.agents.models import AgentExecution, Conversation, ExecutionStatus
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory, ConversationFactory, ExecutionFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="helper")


def test_detail_has_attempts_usage_and_the_error(alice_client, agent, alice):
    execution = ExecutionFactory(
        agent=agent,
        user=alice,
        status=ExecutionStatus.FAILED,
        error_code="provider_error",
        error_message="openai: 503",
        attempts=[
            {
                "platform": "openai",
                "model": "gpt-4o-mini",
                "status": "server_error",
                "latency_ms": 12.5,
                "error": "503",
                "http_status": 503,
                "input_tokens": 0,
                "output_tokens": 0,
            },
        ],
        input_tokens=3,
        output_tokens=4,
        cost=Decimal("0.0000123"),
    )

    body = alice_client.get(f"/api/v1/executions/{execution.pk}/").json()

    assert body["id"] == str(execution.pk)
    assert (body["agent"], body["status"]) == ("helper", "failed")
    assert body["error"] == {"code": "provider_error", "message": "openai: 503"}
    assert body["attempts"][0]["http_status"] == 503
    assert (body["tokens_used"], body["cost"]) == (7, 0.0000123)
    assert body["input_data"] == {"task": "Say hello"}


def test_list_filters_by_agent_status_conversation_and_dates(alice_client, agent, alice):
    other = AgentFactory(owner=alice, agent_id="other")
    conversation = ConversationFactory(owner=alice, agent=agent)
    done = ExecutionFactory(
        agent=agent, user=alice, status=ExecutionStatus.COMPLETED, conversation=conversation
    )
    failed = ExecutionFactory(agent=agent, user=alice, status=ExecutionStatus.FAILED)
    elsewhere = ExecutionFactory(agent=other, user=alice, status=ExecutionStatus.COMPLETED)
    old = ExecutionFactory(agent=other, user=alice)
    AgentExecution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))

    def ids(query: str) -> set[str]:
        response = alice_client.get(f"/api/v1/executions/{query}")
        assert response.status_code == 200, response.content
        return {e["id"] for e in response.json()["results"]}

    assert ids("") == {str(e.pk) for e in (done, failed, elsewhere, old)}
    assert ids("?agent=helper") == {str(done.pk), str(failed.pk)}
    assert ids(f"?agent={agent.pk}") == {str(done.pk), str(failed.pk)}
    assert ids("?status=completed") == {str(done.pk), str(elsewhere.pk)}
    assert ids(f"?conversation={conversation.pk}") == {str(done.pk)}
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    assert ids(f"?created_before={week_ago.replace('+', '%2B')}") == {str(old.pk)}
    assert str(old.pk) not in ids(f"?created_after={week_ago.replace('+', '%2B')}")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("conversation=not-a-uuid", "conversation"),
        ("created_after=yesterday", "created_after"),
        ("agent=%00", "agent"),
        ("surprise=1", "surprise"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(alice_client, query, field):
    error = assert_envelope(alice_client.get(f"/api/v1/executions/?{query}"), 400, "invalid")
    assert field in error["fields"]


def test_list_is_cursor_paginated_newest_first(alice_client, agent, alice):
    made = [ExecutionFactory(agent=agent, user=alice) for _ in range(5)]
    for i, execution in enumerate(made):
        AgentExecution.objects.filter(pk=execution.pk).update(
            created_at=timezone.now() - timedelta(minutes=i)
        )

    first = alice_client.get("/api/v1/executions/?page_size=3").json()
    second = alice_client.get(first["next"]).json()

    assert [e["id"] for e in first["results"] + second["results"]] == [str(e.pk) for e in made]
    assert second["next"] is None


def test_cancel_a_pending_execution(alice_client, agent, alice):
    execution = ExecutionFactory(agent=agent, user=alice, status=ExecutionStatus.PENDING)

    response = alice_client.post(f"/api/v1/executions/{execution.pk}/cancel/")

    assert response.status_code == 202, response.content
    assert response.json() == {
        "execution_id": str(execution.pk),
        "status": "cancelled",
        "cancel_requested": True,
    }
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED


def test_cancel_a_running_execution_flags_it(alice_client, agent, alice):
    execution = ExecutionFactory(
        agent=agent, user=alice, status=ExecutionStatus.RUNNING, started_at=timezone.now()
    )

    response = alice_client.post(f"/api/v1/executions/{execution.pk}/cancel/")

    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    execution.refresh_from_db()
    assert execution.cancel_requested_at is not None


@pytest.mark.parametrize(
    "status", [ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED]
)
def test_cancel_a_finished_execution_is_409(alice_client, agent, alice, status):
    execution = ExecutionFactory(agent=agent, user=alice, status=status)
    error = assert_envelope(
        alice_client.post(f"/api/v1/executions/{execution.pk}/cancel/"), 409, "not_cancellable"
    )
    assert status in error["message"]


def test_stats_aggregate_the_agents_runs(alice_client, agent, alice):
    for seconds in (1.0, 2.0, 3.0):
        ExecutionFactory(
            agent=agent,
            user=alice,
            status=ExecutionStatus.COMPLETED,
            execution_time=seconds,
            input_tokens=10,
            output_tokens=5,
            cost=Decimal("0.001"),
        )
    ExecutionFactory(agent=agent, user=alice, status=ExecutionStatus.FAILED)

    body = alice_client.get("/api/v1/agents/helper/stats/").json()

    assert (body["agent"], body["total"], body["completed"], body["failed"]) == ("helper", 4, 3, 1)
    assert body["success_rate"] == 0.75
    assert body["p50_execution_time"] == 2.0
    assert body["tokens_used"] == 45
    assert body["cost"] == 0.003


def test_stats_of_an_agent_without_runs(alice_client, agent):
    body = alice_client.get("/api/v1/agents/helper/stats/").json()
    assert (body["total"], body["success_rate"], body["p95_execution_time"]) == (0, None, None)


# ---------------------------------------------------------------------------------------------- conversations
def test_create_list_detail_delete_a_conversation(alice_client, agent, alice):
    created = alice_client.post(
        "/api/v1/conversations/", {"agent": "helper", "title": "Planning"}, format="json"
    )
    assert created.status_code == 201, created.content
    conversation_id = created.json()["id"]
    assert created.json()["agent"] == "helper" and created.json()["messages"] == []

    conversation = Conversation.objects.get(pk=conversation_id)
    MessageFactory(conversation=conversation, position=1, role="user", content="hi")
    MessageFactory(conversation=conversation, position=2, role="assistant", content="hello")
    Conversation.objects.filter(pk=conversation_id).update(summary="They greeted each other.", summary_upto=2)

    listed = alice_client.get("/api/v1/conversations/").json()["results"]
    assert [(c["id"], c["message_count"]) for c in listed] == [(conversation_id, 2)]
    detail = alice_client.get(f"/api/v1/conversations/{conversation_id}/").json()
    assert [m["content"] for m in detail["messages"]] == ["hi", "hello"]
    assert (detail["summary"], detail["summary_upto"]) == ("They greeted each other.", 2)

    assert alice_client.delete(f"/api/v1/conversations/{conversation_id}/").status_code == 204
    assert not Conversation.objects.exists()


def test_a_conversation_without_an_agent(alice_client):
    created = alice_client.post("/api/v1/conversations/", {}, format="json")
    assert created.status_code == 201
    assert created.json()["agent"] is None


def test_a_conversation_for_an_invisible_agent_is_404(alice_client, bob):
    AgentFactory(owner=bob, agent_id="bobs")
    error = assert_envelope(
        alice_client.post("/api/v1/conversations/", {"agent": "bobs"}, format="json"), 404, "not_found"
    )
    assert "agent" in error["fields"]
    assert not Conversation.objects.exists()


def test_deleting_a_conversation_with_a_run_in_progress_is_409(alice_client, agent, alice):
    conversation = ConversationFactory(owner=alice, agent=agent)
    running = ExecutionFactory(
        agent=agent, user=alice, status=ExecutionStatus.RUNNING, conversation=conversation
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_execution=running)

    assert_envelope(
        alice_client.delete(f"/api/v1/conversations/{conversation.pk}/"), 409, "conversation_busy"
    )
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_conversation_input_is_validated(alice_client):
    error = assert_envelope(
        alice_client.post("/api/v1/conversations/", {"title": "x" * 201, "color": "red"}, format="json"),
        400,
        "invalid",
    )
    assert "color" in error["fields"] or "title" in error["fields"]


@pytest.mark.parametrize(
    ("resume", "field"),
    [
        ({"HTTP_LAST_EVENT_ID": ""}, "Last-Event-ID"),
        ({"HTTP_LAST_EVENT_ID": "x"}, "Last-Event-ID"),
        ({"QUERY_STRING": "after="}, "after"),
        ({"HTTP_LAST_EVENT_ID": "3", "QUERY_STRING": "after=-7"}, "after"),  # checked even when unused
    ],
)
def test_an_empty_or_bad_last_event_id_is_400_not_from_the_start(alice_client, agent, alice, resume, field):
    # The schema says an integer; an empty header or `after=` used to be read as "from the start".
    execution = ExecutionFactory(agent=agent, user=alice, status=ExecutionStatus.COMPLETED)
    response = alice_client.get(f"/api/v1/executions/{execution.pk}/events/", **resume)
    error = assert_envelope(response, 400, "invalid")
    assert field in error["fields"]
