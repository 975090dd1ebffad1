"""A run's first hold is written with its row (services/budgets.py AdmissionHold): its first attempt's worst
case as guessed from the request, and its concurrency slot, in the INSERT's round trip. The first attempt
uses it when it covers that attempt; otherwise (a guess short of the real request, a guess the budget cannot
afford, a run that ends before any attempt) it is released and the spend control works as without it: no
run refused for a guess, nothing left held, the spend exact."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.agents.engine import HookVeto
from apps.agents.engine.spend import AttemptSpec
from apps.agents.models import AgentExecution, Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import EPOCH, units_to_usd, usd_to_units
from apps.agents.services import budgets as budget_services
from apps.agents.services.budgets import period_start
from apps.agents.services.execution_engine import execution_engine as engine
from apps.platforms.base import Usage
from tests.agents.api.conftest import client_for, post_json
from tests.agents.budgets.conftest import ausage_of, cost_units, worst_case
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "Say hello"


@pytest.fixture
def agent(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice,
        preferred_platform="openai",
        model="gpt-4o-mini",
        max_retries=0,
        max_tokens=50,
        system_prompt="You are a helpful assistant.",
    )


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch) -> list[AttemptSpec]:
    """The attempts that needed a hold of their own (a round trip before they were sent)."""
    made: list[AttemptSpec] = []
    reserve = budget_services._reserve_unit

    async def spied(guard, attempt, settled):  # type: ignore[no-untyped-def]
        made.append(attempt)
        return await reserve(guard, attempt, settled)

    monkeypatch.setattr(budget_services, "_reserve_unit", spied)
    return made


@sync_to_async
def open_windows(budget: Budget) -> None:
    """The budget's windows as a run of an earlier minute leaves them (a window's first hold creates it)."""
    start = period_start(budget.period, timezone.now())
    BudgetUsage.objects.create(budget=budget, period_start=start)
    if budget.max_concurrent is not None and start != EPOCH:
        BudgetUsage.objects.create(budget=budget, period_start=EPOCH)


async def assert_nothing_held(budget: Budget) -> None:
    usage = await ausage_of(budget)
    assert (usage.reserved_units, usage.reserved_tokens, usage.active_runs) == (0, 0, 0)
    assert await BudgetReservation.objects.acount() == 0


async def test_the_first_attempt_uses_the_hold_written_with_the_row(
    agent, alice, fake_registry, fake_openai, holds, monkeypatch
):
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="month", limit_usd=Decimal("5"), max_concurrent=2
    )
    await open_windows(budget)
    seen: list[tuple[int, int]] = []  # (reservations, active runs) as the request was sent

    @sync_to_async
    def snapshot() -> None:
        usage = BudgetUsage.objects.get(budget=budget, period_start=EPOCH)
        seen.append((BudgetReservation.objects.count(), usage.active_runs))

    platform = fake_registry.get("openai")
    generate = platform.generate

    async def sending(request):  # type: ignore[no-untyped-def]
        await snapshot()
        return await generate(request)

    monkeypatch.setattr(platform, "generate", sending)
    fake_openai.reply(Reply(input_tokens=13, output_tokens=12))

    result = await engine.execute_agent(agent, {"task": TASK}, alice)

    assert result.success, result.error
    assert holds == []  # no round trip of its own before the attempt
    assert seen == [(2, 1)]  # the attempt's spend and the run's slot, held when it was sent
    usage = await ausage_of(budget)
    assert usage.spent_units == usd_to_units(fake_registry.cost("openai", "gpt-4o-mini", Usage(13, 12)))
    assert usage.spent_tokens == 25
    assert (usage.reserved_units, usage.reserved_tokens) == (0, 0)
    assert await BudgetReservation.objects.acount() == 0


async def test_a_guess_short_of_the_request_is_released_with_the_attempts_own_hold(
    agent, alice, fake_registry, fake_openai, holds, monkeypatch
):
    budget = await Budget.objects.acreate(scope="user", user=alice, period="month", limit_usd=Decimal("5"))
    await open_windows(budget)
    monkeypatch.setattr(engine, "first_attempt", lambda prepared: AttemptSpec("openai", "gpt-4o-mini", 1, 1))
    fake_openai.reply(Reply(input_tokens=13, output_tokens=12))

    result = await engine.execute_agent(agent, {"task": TASK}, alice)

    assert result.success, result.error
    assert [(a.platform, a.output_tokens) for a in holds] == [("openai", 50)]  # the real worst case
    usage = await ausage_of(budget)
    assert usage.spent_units == usd_to_units(fake_registry.cost("openai", "gpt-4o-mini", Usage(13, 12)))
    assert (usage.spent_tokens, usage.reserved_units, usage.reserved_tokens) == (25, 0, 0)
    assert await BudgetReservation.objects.acount() == 0


async def test_a_guess_the_budget_cannot_afford_does_not_refuse_a_run_it_can(
    agent, alice, fake_registry, fake_openai, holds
):
    # Room for the first attempt's real worst case and no more: the guess (the input as JSON, a quarter
    # over) does not fit, the attempt does.
    exact = worst_case(TASK, max_tokens=50)
    room = cost_units(fake_registry, exact)
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="month", limit_usd=units_to_usd(room)
    )
    await open_windows(budget)
    fake_openai.reply(Reply(input_tokens=13, output_tokens=12))

    result = await engine.execute_agent(agent, {"task": TASK}, alice)

    assert result.success, result.error
    assert holds == [exact]
    assert len(fake_openai.requests) == 1
    await assert_nothing_held(budget)


async def test_a_run_that_ends_before_its_first_attempt_releases_what_admission_held(
    agent, alice, fake_registry, fake_openai, holds, monkeypatch
):
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="month", limit_usd=Decimal("5"), max_concurrent=1
    )
    await open_windows(budget)
    build = engine.build_agent

    def vetoing(config, **kwargs):  # type: ignore[no-untyped-def]
        built = build(config, **kwargs)

        def veto(input_data, context):  # type: ignore[no-untyped-def]
            raise HookVeto("not today")

        built.add_pre_hook(veto)
        return built

    monkeypatch.setattr(engine, "build_agent", vetoing)

    result = await engine.execute_agent(agent, {"task": TASK}, alice)

    assert not result.success
    assert fake_openai.requests == [] and holds == []
    await assert_nothing_held(budget)
    usage = await ausage_of(budget)
    assert (usage.spent_units, usage.spent_tokens) == (0, 0)
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert row.status == "failed"


def test_a_replay_and_a_busy_conversation_hold_nothing(alice, agent, fake_registry, fake_openai):
    budget = Budget.objects.create(scope="user", user=alice, period="month", limit_usd=Decimal("5"))
    BudgetUsage.objects.create(budget=budget, period_start=period_start("month", timezone.now()))
    client = client_for(alice)
    url = f"/api/v1/agents/{agent.agent_id}/execute/"
    first = post_json(client, url, {"input_data": {"task": TASK}}, HTTP_IDEMPOTENCY_KEY="k-1")
    again = post_json(client, url, {"input_data": {"task": TASK}}, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 200
    assert first.json()["execution_id"] == again.json()["execution_id"]
    assert len(fake_openai.requests) == 1
    usage = BudgetUsage.objects.get(budget=budget)
    assert (usage.reserved_units, usage.active_runs) == (0, 0) and usage.spent_tokens > 0
    assert BudgetReservation.objects.count() == 0
