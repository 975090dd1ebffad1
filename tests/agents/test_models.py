import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError

from tests.factories import AgentFactory, ExecutionFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("agent_id", "Not A Slug"),
        ("agent_id", "trailing-"),
        ("output_schema", {"type": "no-such-type"}),
        ("output_schema", ["not", "an", "object"]),
        ("capabilities", "CODE_GENERATION"),
        ("tools", [1, 2]),
        ("timeout_seconds", 0),
        ("max_retries", 11),
    ],
)
def test_invalid_agent_fields_are_rejected_by_name(field, value):
    agent = AgentFactory.build(**{field: value})
    with pytest.raises(ValidationError) as info:
        agent.full_clean(exclude=["owner"])
    assert field in info.value.message_dict


def test_valid_agent_passes_validation():
    agent = AgentFactory.build(
        temperature=0.7,
        agent_id="code-reviewer",
        output_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}},
        capabilities=["CODE_REVIEW"],
        tools=["calculator"],
    )
    agent.full_clean(exclude=["owner"])


def test_database_rejects_out_of_range_temperature_even_without_validation():
    with pytest.raises(IntegrityError):
        AgentFactory(temperature=3.0)


def test_idempotency_key_is_unique_per_user_only():
    first = ExecutionFactory(idempotency_key="k1")
    ExecutionFactory(idempotency_key="k1")  # another user: fine
    ExecutionFactory(agent=first.agent, user=first.user, idempotency_key=None)
    ExecutionFactory(agent=first.agent, user=first.user, idempotency_key=None)  # many without a key: fine
    with pytest.raises(IntegrityError):
        ExecutionFactory(agent=first.agent, user=first.user, idempotency_key="k1")


def test_effective_temperature_defaults_by_type():
    assert AgentFactory.build(temperature=None, agent_type="task").effective_temperature == 0.3
    assert AgentFactory.build(temperature=None, agent_type="conversational").effective_temperature == 0.8


def test_create_demo_user_is_idempotent_and_prints_a_token(capsys, settings):
    settings.DEMO_USER, settings.DEMO_PASSWORD = "demo", "demo-pass-123"
    call_command("create_demo_user")
    first = capsys.readouterr().out
    call_command("create_demo_user")
    second = capsys.readouterr().out
    token_line = [line for line in first.splitlines() if line.startswith("API token:")]
    assert token_line and token_line[0] in second
    assert "demo / demo-pass-123" in first
