"""ExecutionEngine end to end: real adapters and SDKs against the fake provider servers over HTTP, real DB.

Retries, Retry-After, 400s, fallback across the three providers, cooldown, deadline, exact tokens and cost,
and the seed's usage example. Streaming and cancellation: test_execution_engine_stream.py; structured output,
tools and conversations: test_execution_engine_features.py.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from apps.agents.errors import ApplicationError
from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services.execution_engine import execution_engine as engine
from apps.platforms.base import Usage
from apps.platforms.pricing import Pricing
from tests.factories import AgentFactory, ConversationFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test, or PostgreSQL
    refuses to drop the test database at the end ("being accessed by other users")."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordedSleep:
    """The engine's retry sleep, recorded and instant (assert on the delays instead of waiting them out)."""
    recorder = RecordedSleep()
    monkeypatch.setattr(engine, "sleep", recorder)
    return recorder


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="greeter", preferred_platform="openai", model="gpt-4o-mini")


async def row(result) -> AgentExecution:
    return await AgentExecution.objects.aget(pk=result.execution_id)


async def test_the_seed_usage_example_works_as_written(fake_registry, fake_openai, agent, alice):
    from apps.agents.services import execution_engine

    fake_openai.reply(text="Hello! How can I help?")

    result = await execution_engine.execute_agent(agent=agent, input_data={"task": "Say hello"}, user=alice)

    assert result.output == "Hello! How can I help?"
    assert result.tokens_used == 18 and result.cost > 0
    execution = await row(result)
    assert execution.status == ExecutionStatus.COMPLETED
    assert (execution.output, execution.user_id, execution.mode) == (
        "Hello! How can I help?",
        alice.pk,
        "sync",
    )
    assert fake_openai.requests[0].body["messages"][-1] == {"role": "user", "content": "Say hello"}


async def test_exact_tokens_and_cost_of_a_non_streamed_run(fake_registry, fake_openai, agent, alice):
    fake_openai.reply(text="ok", input_tokens=1234, output_tokens=567)
    result = await engine.execute_agent(agent, {"task": "count"}, alice)
    execution = await row(result)
    assert (execution.input_tokens, execution.output_tokens) == (1234, 567)
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output.
    assert execution.cost == Decimal("0.0005253") == result.cost
    assert execution.cost == Pricing().cost("openai", "gpt-4o-mini", Usage(1234, 567))
    assert execution.attempts == [
        {
            "platform": "openai",
            "model": "gpt-4o-mini",
            "status": "ok",
            "latency_ms": execution.attempts[0]["latency_ms"],
            "error": None,
            "http_status": None,
            "input_tokens": 1234,
            "output_tokens": 567,
        }
    ]


async def test_retry_then_success(fake_registry, fake_openai, fake_anthropic, agent, alice, sleeps):
    fake_openai.fail(Fault("status", status=503), times=2)
    fake_openai.reply(text="third time lucky")
    result = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert result.success and result.output == "third time lucky"
    execution = await row(result)
    assert [(a["status"], a["http_status"]) for a in execution.attempts] == [
        ("server_error", 503),
        ("server_error", 503),
        ("ok", None),
    ]
    assert len(fake_openai.requests) == 3 and fake_anthropic.requests == []
    assert len(sleeps.delays) == 2


async def test_retry_after_is_honoured(fake_registry, fake_openai, agent, alice, sleeps):
    fake_openai.fail(Fault("status", status=429, retry_after=2))
    result = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert result.success
    assert sleeps.delays == [2.0]
    assert [a["status"] for a in (await row(result)).attempts] == ["rate_limited", "ok"]


async def test_a_400_is_neither_retried_nor_sent_elsewhere(
    fake_registry, fake_openai, fake_anthropic, fake_gemini, agent, alice, sleeps
):
    fake_openai.fail(Fault("status", status=400, message="Invalid value for 'temperature'"))
    result = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert result.success is False and result.error.code == "provider_error"
    assert "Invalid value for 'temperature'" in result.error.message
    execution = await row(result)
    assert (execution.status, execution.error_code) == (ExecutionStatus.FAILED, "provider_error")
    assert "Invalid value for 'temperature'" in execution.error_message
    assert len(fake_openai.requests) == 1
    assert fake_anthropic.requests == [] and fake_gemini.requests == []
    assert sleeps.delays == []


async def test_fallback_openai_anthropic_gemini_with_every_attempt_recorded(
    fake_registry, fake_openai, fake_anthropic, fake_gemini, agent, alice, sleeps
):
    fake_openai.fail(Fault("status", status=503), times=3)
    fake_anthropic.fail(Fault("status", status=500), times=3)
    fake_gemini.reply(text="Gemini here", input_tokens=30, output_tokens=4)

    result = await engine.execute_agent(agent, {"task": "x"}, alice)

    assert result.success and result.output == "Gemini here"
    execution = await row(result)
    assert (execution.platform_used, execution.model_used) == ("gemini", "gemini-2.0-flash")
    assert [(a["platform"], a["model"], a["status"], a["http_status"]) for a in execution.attempts] == [
        *[("openai", "gpt-4o-mini", "server_error", 503)] * 3,
        *[("anthropic", "claude-3-5-haiku-latest", "server_error", 500)] * 3,
        ("gemini", "gemini-2.0-flash", "ok", None),
    ]
    assert all(a["latency_ms"] >= 0 for a in execution.attempts)
    assert execution.cost == Pricing().cost("gemini", "gemini-2.0-flash", Usage(30, 4))
    # Anthropic got its own default model, not the agent's OpenAI model.
    assert fake_anthropic.requests[0].body["model"] == "claude-3-5-haiku-latest"


@override_settings(PLATFORM_COOLDOWN_AFTER_FAILURES=3, PLATFORM_COOLDOWN_SECONDS=60)
async def test_cooldown_skips_a_dead_platform_without_a_request(
    fake_registry, fake_openai, fake_anthropic, agent, alice, sleeps
):
    fake_openai.fail(Fault("status", status=503), times=3)
    first = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert first.platform_used == "anthropic" and len(fake_openai.requests) == 3
    fake_openai.reply(text="would answer now")  # it would, if anyone asked

    second = await engine.execute_agent(agent, {"task": "x"}, alice)

    assert second.success and second.platform_used == "anthropic"
    assert len(fake_openai.requests) == 3  # no request reached it
    assert [(a["platform"], a["status"]) for a in (await row(second)).attempts] == [
        ("openai", "cooldown"),
        ("anthropic", "ok"),
    ]


async def test_deadline_fails_the_run_with_timeout(fake_registry, fake_openai, fake_anthropic, alice):
    agent = await sync_to_async(AgentFactory)(owner=alice, timeout_seconds=1)
    fake_openai.fail(Fault("hang"))
    result = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert result.success is False and result.error.code == "timeout"
    execution = await row(result)
    assert (execution.status, execution.error_code) == (ExecutionStatus.FAILED, "timeout")
    assert [a["status"] for a in execution.attempts] == ["timeout"]
    assert fake_anthropic.requests == []
    # The abandoned request was closed, not left hanging on the provider.
    assert await asyncio.to_thread(fake_openai.wait_for_disconnect)


async def test_every_platform_failing_is_a_provider_error_with_the_last_message(
    fake_registry, fake_openai, fake_anthropic, fake_gemini, agent, alice, sleeps
):
    fake_openai.fail(Fault("status", status=401))
    fake_anthropic.fail(Fault("status", status=404, message="model: nope"))
    fake_gemini.fail(Fault("status", status=403, message="PERMISSION_DENIED for this key"))
    result = await engine.execute_agent(agent, {"task": "x"}, alice)
    assert result.error.code == "provider_error"
    assert "PERMISSION_DENIED" in result.error.message
    assert [a["status"] for a in (await row(result)).attempts] == ["auth", "not_found", "auth"]


async def test_no_configured_platform_is_no_platform(agent, alice):
    from apps.platforms.registry import PlatformRegistry, installed_registry, set_registry

    previous = installed_registry()
    set_registry(PlatformRegistry({}))
    try:
        result = await engine.execute_agent(agent, {"task": "x"}, alice)
    finally:
        set_registry(previous)
    assert result.error.code == "no_platform"
    assert (await row(result)).error_code == "no_platform"


@pytest.mark.parametrize(
    ("input_data", "context", "field"),
    [
        ({}, None, "input_data.task"),
        ({"task": "   "}, None, "input_data.task"),
        ({"task": 42}, None, "input_data.task"),
        ({"task": "a\x00b"}, None, "input_data.task"),
        ({"task": "x", "output_format": ["json"]}, None, "input_data.output_format"),
        ("just a string", None, "input_data"),
        (
            {"task": "x"},
            {"conversation_history": [{"role": "system", "content": "hi"}]},
            "context.conversation_history[0].role",
        ),
        ({"task": "x"}, {"unknown": 1}, "context.unknown"),
        ({"task": "x"}, {"conversation_history": "nope"}, "context.conversation_history"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    fake_registry, fake_openai, agent, alice, input_data, context, field
):
    with pytest.raises(ApplicationError) as caught:
        await engine.execute_agent(agent, input_data, alice, context)
    assert caught.value.status == 400 and field in caught.value.fields
    assert await AgentExecution.objects.acount() == 0
    assert fake_openai.requests == []


async def test_someone_elses_conversation_is_a_404_and_writes_nothing(
    fake_registry, fake_openai, agent, alice, bob
):
    bobs = await sync_to_async(ConversationFactory)(owner=bob)
    for conversation_id in (str(bobs.pk), "not-a-uuid"):
        with pytest.raises(ApplicationError) as caught:
            await engine.execute_agent(agent, {"task": "x"}, alice, {"conversation_id": conversation_id})
        assert (caught.value.status, caught.value.code) == (404, "not_found")
        assert "context.conversation_id" in caught.value.fields
    assert await AgentExecution.objects.acount() == 0


async def test_status_and_cancel_of_a_pending_and_a_finished_execution(
    fake_registry, fake_openai, agent, alice
):
    pending = await engine.create_pending(agent, {"task": "later"}, alice)
    assert pending.status == ExecutionStatus.PENDING and pending.mode == "background"
    status = await engine.get_execution_status(pending.pk)
    assert (status["status"], status["success"], status["execution_id"]) == (
        "pending",
        False,
        str(pending.pk),
    )

    assert await engine.cancel(pending.pk) is True
    cancelled = await engine.get_execution_status(pending.pk)
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled_by_user"
    assert await engine.cancel(pending.pk) is False

    # A cancelled row is never run.
    result = await engine.run_execution(pending.pk)
    assert result.success is False and fake_openai.requests == []

    with pytest.raises(ApplicationError) as caught:
        await engine.get_execution_status("00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 404
