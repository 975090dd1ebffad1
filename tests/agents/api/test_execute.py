"""POST /api/v1/agents/{id}/execute/: the seed contract through the real engine and SDKs against the fakes."""

from __future__ import annotations

import pytest

from apps.agents.api.serializers import AgentExecutionInputSerializer
from apps.agents.models import AgentExecution, ExecutionStatus
from tests.agents.api.conftest import post_json
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory, ConversationFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db

SEED_KEYS = {
    "success",
    "output",
    "execution_id",
    "tokens_used",
    "cost",
    "execution_time",
    "platform_used",
    "model_used",
    "metadata",
}


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0)


def execute(client, body, key="helper", **extra):  # type: ignore[no-untyped-def]
    return post_json(client, f"/api/v1/agents/{key}/execute/", body, **extra)


def test_a_run_answers_the_seed_body_and_records_the_execution(
    fake_registry, fake_openai, alice_client, agent
):
    fake_openai.reply(text="def fibonacci(n): ...", input_tokens=100, output_tokens=50)

    response = execute(
        alice_client,
        {
            "input_data": {"task": "Write a Python function to calculate fibonacci", "output_format": "code"},
            "context": {"conversation_history": []},
        },
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) >= SEED_KEYS
    assert body["success"] is True
    assert body["output"] == "def fibonacci(n): ..."
    assert (body["tokens_used"], body["platform_used"], body["model_used"]) == (150, "openai", "gpt-4o-mini")
    assert body["cost"] > 0
    execution = AgentExecution.objects.get(pk=body["execution_id"])
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.user.username == "alice"
    assert execution.input_data["task"].startswith("Write a Python function")


def test_a_shared_agent_can_be_run_by_others(fake_registry, fake_openai, bob_client, alice):
    AgentFactory(owner=alice, agent_id="shared", is_shared=True, preferred_platform="openai")
    assert execute(bob_client, {"input_data": {"task": "hi"}}, key="shared").status_code == 200


def test_failure_after_retries_and_fallbacks_is_502_with_the_same_shape(
    fake_registry, fake_openai, fake_anthropic, fake_gemini, alice_client, agent
):
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=401, message="bad key"), times=3)

    response = execute(alice_client, {"input_data": {"task": "hi"}})

    assert response.status_code == 502, response.content
    body = response.json()
    assert set(body) >= SEED_KEYS
    assert body["success"] is False
    assert body["error"]["code"] == "provider_error"
    assert AgentExecution.objects.get(pk=body["execution_id"]).status == ExecutionStatus.FAILED


def test_a_timeout_is_504(fake_registry, fake_openai, alice_client, alice):
    AgentFactory(owner=alice, agent_id="slow", preferred_platform="openai", max_retries=0, timeout_seconds=1)
    for fake in (fake_openai,):
        fake.fail(Fault("hang"))

    response = execute(alice_client, {"input_data": {"task": "hi"}}, key="slow")

    assert response.status_code == 504, response.content
    assert response.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input_data"),
        ({"input_data": {}}, "input_data.task"),
        ({"input_data": {"task": ""}}, "input_data.task"),
        ({"input_data": {"task": "   "}}, "input_data.task"),
        ({"input_data": {"task": 42}}, "input_data.task"),
        ({"input_data": {"task": "a\x00b"}}, "input_data.task"),
        ({"input_data": {"task": "a\ud800b"}}, "input_data.task"),
        ({"input_data": {"task": "ok", "output_format": 7}}, "input_data.output_format"),
        ({"input_data": {"task": "ok", "extra": "nul\x00"}}, "input_data.extra"),
        ({"input_data": {"task": "ok", "extra": {"deep": ["\ud800"]}}}, "input_data.extra.deep[0]"),
        ({"input_data": "a string"}, "input_data"),
        ({"input_data": {"task": "ok"}, "stream": "yes"}, "stream"),
        ({"input_data": {"task": "ok"}, "background": 1}, "background"),
        ({"input_data": {"task": "ok"}, "stream": True, "background": True}, "background"),
        ({"input_data": {"task": "ok"}, "surprise": True}, "surprise"),
        ({"input_data": {"task": "ok"}, "context": {"unknown": 1}}, "context.unknown"),
        (
            {"input_data": {"task": "ok"}, "context": {"conversation_id": "not-a-uuid"}},
            "context.conversation_id",
        ),
        (
            {
                "input_data": {"task": "ok"},
                "context": {"conversation_history": [{"role": "system", "content": "x"}]},
            },
            "context.conversation_history[0].role",
        ),
        (
            {
                "input_data": {"task": "ok"},
                "context": {"conversation_history": [{"role": "user", "content": 5}]},
            },
            "context.conversation_history[0].content",
        ),
    ],
)
def test_bad_input_is_400_naming_the_field_and_writes_no_row(alice_client, agent, body, field):
    error = assert_envelope(execute(alice_client, body), 400, "invalid")
    assert field in error["fields"], error
    assert not AgentExecution.objects.exists()


def test_task_and_history_limits_come_from_settings(alice_client, agent, settings):
    settings.MAX_TASK_CHARS = 10
    settings.MAX_HISTORY_MESSAGES = 2

    long_task = assert_envelope(execute(alice_client, {"input_data": {"task": "x" * 11}}), 400, "invalid")
    history = [{"role": "user", "content": "hi"}] * 3
    long_history = assert_envelope(
        execute(alice_client, {"input_data": {"task": "ok"}, "context": {"conversation_history": history}}),
        400,
        "invalid",
    )

    assert long_task["fields"]["input_data.task"] == ["Ensure this field has no more than 10 characters."]
    assert long_history["fields"]["context.conversation_history"] == [
        "Ensure this field has no more than 2 elements."
    ]
    assert not AgentExecution.objects.exists()


def test_history_content_and_summary_limits_come_from_settings(alice_client, agent, settings):
    settings.MAX_TASK_CHARS = 5
    context = {
        "conversation_history": [{"role": "user", "content": "x" * 6}],
        "conversation_summary": "y" * 6,
    }

    body = assert_envelope(
        execute(alice_client, {"input_data": {"task": "ok"}, "context": context}), 400, "invalid"
    )

    assert body["fields"] == {
        "context.conversation_history[0].content": ["Ensure this field has no more than 5 characters."],
        "context.conversation_summary": ["Ensure this field has no more than 5 characters."],
    }
    assert not AgentExecution.objects.exists()


def test_a_request_without_context_never_builds_the_context_fields():
    # DRF deep-copies a serializer's declared fields when they are first read; a nested serializer that read
    # them in __init__ built the whole context tree (history messages included) for every execute request.
    data = AgentExecutionInputSerializer(data={"input_data": {"task": "Say hello"}})

    assert data.is_valid(), data.errors
    assert "fields" in vars(data.fields["input_data"])  # read: the task was validated
    assert "fields" not in vars(data.fields["context"])  # never read, never built


def test_an_inactive_agent_is_409(alice_client, alice):
    AgentFactory(owner=alice, agent_id="off", is_active=False)
    assert_envelope(execute(alice_client, {"input_data": {"task": "hi"}}, key="off"), 409, "agent_inactive")
    assert not AgentExecution.objects.exists()


def test_someone_elses_conversation_is_404_and_writes_nothing(alice_client, agent, bob):
    theirs = ConversationFactory(owner=bob)
    body = {"input_data": {"task": "hi"}, "context": {"conversation_id": str(theirs.pk)}}
    error = assert_envelope(execute(alice_client, body), 404, "not_found")
    assert "context.conversation_id" in error["fields"]
    assert not AgentExecution.objects.exists()


def test_a_conversation_run_stores_its_messages(fake_registry, fake_openai, alice_client, alice, agent):
    conversation = ConversationFactory(owner=alice, agent=agent)
    fake_openai.reply(text="Hello Alice")

    response = execute(
        alice_client,
        {"input_data": {"task": "Hi, I am Alice"}, "context": {"conversation_id": str(conversation.pk)}},
    )

    assert response.status_code == 200, response.content
    detail = alice_client.get(f"/api/v1/conversations/{conversation.pk}/").json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "Hi, I am Alice"),
        ("assistant", "Hello Alice"),
    ]


def test_an_invalid_idempotency_key_is_400(alice_client, agent):
    response = execute(alice_client, {"input_data": {"task": "hi"}}, HTTP_IDEMPOTENCY_KEY="k" * 256)
    error = assert_envelope(response, 400, "invalid_idempotency_key")
    assert "idempotency_key" in error["fields"]
