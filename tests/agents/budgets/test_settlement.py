"""Every attempt reserves its worst case and settles to what it really used, whatever its end: a stream,
a stream cancelled half-way, a retry, a fallback. The HTTP fakes drive the real adapters; a small scripted
platform stands in for an adapter that reports partial usage on a cut stream or an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from apps.agents.engine.events import OutputDelta
from apps.agents.models import AgentExecution, Budget, BudgetReservation
from apps.agents.models_budget import usd_to_units
from apps.agents.services.execution_engine import execution_engine as engine
from apps.platforms.base import Chunk, Completion, CompletionRequest, Platform, Usage
from apps.platforms.errors import PlatformError
from apps.platforms.pricing import Pricing
from apps.platforms.registry import PlatformRegistry, installed_registry, set_registry
from tests.agents.budgets.conftest import ausage_of, cost_units, usd, worst_case
from tests.factories import AgentFactory
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(engine, "sleep", sleep)


@pytest.fixture
def agent(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice, preferred_platform="openai", model="gpt-4o-mini", max_retries=1, max_tokens=50
    )


@pytest.fixture
def budget(alice):  # type: ignore[no-untyped-def]
    return Budget.objects.create(scope="user", user=alice, period="month", limit_usd=Decimal("5"))


def units(registry, platform: str, model: str, usage: Usage) -> int:  # type: ignore[no-untyped-def]
    return usd_to_units(registry.cost(platform, model, usage))


async def collect(events: AsyncIterator) -> list:  # type: ignore[type-arg]
    return [event async for event in events]


async def assert_settled(budget: Budget, *, tokens: int, spent_units: int) -> None:
    usage = await ausage_of(budget)
    assert (usage.spent_tokens, usage.spent_units) == (tokens, spent_units)
    assert (usage.reserved_units, usage.reserved_tokens) == (0, 0)
    assert await BudgetReservation.objects.acount() == 0


async def test_a_streamed_run_settles_its_exact_usage(agent, budget, alice, fake_registry, fake_openai):
    fake_openai.reply(Reply(text=LONG, input_tokens=13, output_tokens=12))
    events = await collect(engine.execute_streaming(agent, {"task": "hi"}, alice))
    assert sum(isinstance(e, OutputDelta) for e in events) > 1
    row = await AgentExecution.objects.aget(pk=events[0].execution_id)
    assert row.status == "completed"
    spent = units(fake_registry, "openai", "gpt-4o-mini", Usage(13, 12))
    await assert_settled(budget, tokens=25, spent_units=spent)
    assert usd_to_units(row.cost) == spent  # the budget and the run's record agree


async def test_a_retried_run_reserves_before_each_attempt_and_settles_both(
    agent, alice, fake_registry, fake_openai
):
    # Room for one attempt's worst case only: the retry is admitted because the failed attempt (which
    # reported no usage) released its reservation.
    spec = worst_case("hi", max_tokens=50)
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="day", limit_tokens=spec.usage.total_tokens
    )
    fake_openai.fail(Fault("status", status=500))
    fake_openai.reply(Reply(input_tokens=10, output_tokens=5))
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert result.success, result.error
    assert len(fake_openai.requests) == 2
    await assert_settled(
        budget, tokens=15, spent_units=units(fake_registry, "openai", "gpt-4o-mini", Usage(10, 5))
    )


async def test_a_fallen_back_run_settles_at_the_fallback_platforms_price(
    agent, budget, alice, fake_registry, fake_openai, fake_anthropic
):
    fake_openai.fail(Fault("status", status=401))  # not retried; falls back to anthropic
    fake_anthropic.reply(Reply(input_tokens=20, output_tokens=9))
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert result.success and result.platform_used == "anthropic"
    spent = units(fake_registry, "anthropic", "claude-3-5-haiku-latest", Usage(20, 9))
    assert spent != units(fake_registry, "openai", "gpt-4o-mini", Usage(20, 9))
    await assert_settled(budget, tokens=29, spent_units=spent)


async def budget_between(alice, fake_registry, cheaper: tuple[str, str], dearer: tuple[str, str]) -> Budget:  # type: ignore[no-untyped-def]
    """A USD budget that affords one attempt of `cheaper` (platform, model) but not one of `dearer`."""
    low, high = (
        cost_units(fake_registry, worst_case("hi", platform=p, model=m, max_tokens=50))
        for p, m in (cheaper, dearer)
    )
    assert low < high
    return await Budget.objects.acreate(scope="user", user=alice, period="day", limit_usd=usd(low))


async def test_a_fallback_the_budget_refuses_is_skipped_for_one_that_fits(
    agent, alice, fake_registry, fake_openai, fake_anthropic, fake_gemini
):
    # openai fails (401: not retried), anthropic's haiku costs more than the budget holds, gemini (cheaper
    # than gpt-4o-mini) fits.
    budget = await budget_between(
        alice, fake_registry, ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-latest")
    )
    fake_openai.fail(Fault("status", status=401))
    fake_gemini.reply(Reply(input_tokens=20, output_tokens=9))
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert result.success, result.error
    assert result.platform_used == "gemini"
    assert fake_anthropic.requests == []  # refused: nothing sent
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert [(a["platform"], a["status"]) for a in row.attempts] == [
        ("openai", "auth"),
        ("anthropic", "budget_exceeded"),
        ("gemini", "ok"),
    ]
    spent = units(fake_registry, "gemini", "gemini-2.0-flash", Usage(20, 9))
    await assert_settled(budget, tokens=29, spent_units=spent)


async def test_a_run_fails_budget_exceeded_when_no_fallback_fits(
    alice, fake_registry, fake_openai, fake_anthropic, fake_gemini
):
    agent = await sync_to_async(AgentFactory)(
        owner=alice, preferred_platform="gemini", model="gemini-2.0-flash", max_retries=0, max_tokens=50
    )
    budget = await budget_between(
        alice, fake_registry, ("gemini", "gemini-2.0-flash"), ("openai", "gpt-4o-mini")
    )
    fake_gemini.fail(Fault("status", status=401))
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert not result.success and result.error.code == "budget_exceeded"
    assert budget.label in result.error.message
    assert fake_openai.requests == [] and fake_anthropic.requests == []
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert (row.status, row.error_code) == ("failed", "budget_exceeded")
    assert [a["status"] for a in row.attempts][1:] == ["budget_exceeded", "budget_exceeded"]
    await assert_settled(budget, tokens=0, spent_units=0)


async def test_a_run_a_budget_cannot_afford_sends_nothing(agent, alice, fake_registry, fake_openai):
    spec = worst_case("hi", max_tokens=50)
    await Budget.objects.acreate(
        scope="user", user=alice, period="day", limit_tokens=spec.usage.total_tokens - 1
    )
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert not result.success and result.error.code == "budget_exceeded"
    assert "resets at" in result.error.message and str(spec.usage.total_tokens - 1) in result.error.message
    assert fake_openai.requests == []
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert (row.status, row.error_code) == ("failed", "budget_exceeded")
    assert row.attempts[0]["status"] == "budget_exceeded"


# ------------------------------------------------------------------ an adapter that reports partial usage
class PartialUsagePlatform(Platform):
    """Streams one piece announcing the usage so far, then hangs (until cancelled); or fails with `usage`
    on the error, as adapters do for a timed-out or cut request when the provider said what it used."""

    name = "openai"
    default_model = "m"

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.sent = asyncio.Event()

    async def generate(self, request: CompletionRequest) -> Completion:
        error = PlatformError("cut", provider="openai", kind="incomplete_stream", retryable=False)
        error.usage = Usage(30, 4)  # type: ignore[attr-defined]
        raise error

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        yield Chunk(text="partial ", usage=Usage(30, 4))
        self.sent.set()
        await asyncio.sleep(3600)
        yield Chunk(text="never")  # pragma: no cover


@pytest.fixture
def partial_registry():  # type: ignore[no-untyped-def]
    platform = PartialUsagePlatform()
    registry = PlatformRegistry(
        {"openai": platform},
        fallback_order=("openai",),
        pricing=Pricing({"openai:m": {"input": "1", "output": "2"}}),
    )
    previous = installed_registry()
    set_registry(registry)
    yield platform, registry
    set_registry(previous)


async def test_a_cancelled_stream_settles_its_partial_usage(alice, budget, partial_registry):
    _platform, registry = partial_registry
    agent = await sync_to_async(AgentFactory)(
        owner=alice, preferred_platform="openai", model="m", max_retries=0
    )
    events = engine.execute_streaming(agent, {"task": "hi"}, alice)
    seen = []
    async for event in events:
        seen.append(event)
        if isinstance(event, OutputDelta):
            break
    usage_mid = await ausage_of(budget)
    assert usage_mid.reserved_tokens > 0  # held while the attempt runs
    await events.aclose()  # the caller goes away: the run is cancelled (the inner generator's close is
    # scheduled by the loop's async-generator finaliser, so the row is written a moment later)
    rows = AgentExecution.objects.filter(pk=seen[0].execution_id)
    for _ in range(500):
        if await rows.exclude(status="running").aexists():
            break
        await asyncio.sleep(0.01)
    row = await rows.aget()
    assert row.status == "cancelled"
    await assert_settled(budget, tokens=34, spent_units=units(registry, "openai", "m", Usage(30, 4)))


async def test_a_failed_attempt_settles_the_usage_its_error_reports(alice, budget, partial_registry):
    _platform, registry = partial_registry
    agent = await sync_to_async(AgentFactory)(
        owner=alice, preferred_platform="openai", model="m", max_retries=0
    )
    result = await engine.execute_agent(agent, {"task": "hi"}, alice)
    assert not result.success
    await assert_settled(budget, tokens=34, spent_units=units(registry, "openai", "m", Usage(30, 4)))
