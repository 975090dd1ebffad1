"""50 concurrent runs over HTTP against a budget that affords exactly 10 runs in flight: the conditional UPDATE
admits 10, the other 40 get 429 budget_exceeded, nothing else reaches the provider, spend stays within the
limit. Runs on SQLite by default; with DATABASE_URL=postgres://... the same test runs on PostgreSQL.

What a run holds while in flight is its admission's guess of its first attempt (services/budgets.py
AdmissionHold), a little over that attempt's worst case, kept by the attempt it covers until the run settles.
The budget is 10 such holds: 10 runs fit however their holds and settlements interleave, and an 11th never
does, not even once all 10 have settled at their first attempt's worst case (asserted below). A budget of 10
first-attempt worst cases admitted 9 whenever the 10th attempt came before any of the 9 had settled (seen
under load)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.agents.models import AgentExecution, Budget, BudgetUsage
from apps.agents.models_budget import units_to_usd, usd_to_units
from tests.agents.api.conftest import token_for
from tests.agents.budgets.conftest import admission_guess, aopen_reservations, cost_units, worst_case
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 50
AFFORDED = 10
MAX_TOKENS = 64


@pytest.mark.parametrize("with_roomier_budgets", [False, True], ids=["one budget", "three budgets"])
async def test_fifty_concurrent_runs_against_a_budget_for_ten(
    live_server_url, fake_registry, fake_openai, alice, with_roomier_budgets
):
    agent = await sync_to_async(AgentFactory)(
        owner=alice, agent_id="budgeted", preferred_platform="openai", max_retries=0, max_tokens=MAX_TOKENS
    )
    spec = worst_case("hi", max_tokens=MAX_TOKENS)
    each = cost_units(fake_registry, spec)
    held = admission_guess(agent, "hi", max_tokens=MAX_TOKENS)
    held_units = cost_units(fake_registry, held)
    assert each > 0 and held.usage.total_tokens >= spec.usage.total_tokens and held_units >= each
    # Exactly 10: what 10 settled runs leave unspent is less than one more attempt's worst case.
    assert AFFORDED * (held_units - each) < each
    budget = await Budget.objects.acreate(
        scope="agent",
        agent=agent,
        period="day",
        limit_usd=units_to_usd(AFFORDED * held_units),
        limit_tokens=AFFORDED * held.usage.total_tokens,
    )
    if with_roomier_budgets:
        # Each hold then claims three windows (and one run slot) at once: all of them or none, rows locked in
        # one order (the one-budget case takes the single-row path, without a lock).
        await Budget.objects.acreate(scope="deployment", period="total", limit_usd=units_to_usd(100 * each))
        await Budget.objects.acreate(scope="user", user=alice, period="month", max_concurrent=RUNS)
    # Every answer reports exactly the worst case, so a settled run frees no room: exactly 10 fit.
    for _ in range(RUNS):
        fake_openai.reply(Reply(input_tokens=spec.input_tokens, output_tokens=spec.output_tokens))
    headers = {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}

    async with httpx.AsyncClient(base_url=live_server_url, timeout=60) as client:

        async def one() -> httpx.Response:
            return await client.post(
                "/api/v1/agents/budgeted/execute/", json={"input_data": {"task": "hi"}}, headers=headers
            )

        responses = await asyncio.gather(*(one() for _ in range(RUNS)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: AFFORDED, 429: RUNS - AFFORDED}, statuses
    assert len(fake_openai.requests) == AFFORDED
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "budget '" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    usage = await BudgetUsage.objects.exclude(period_start__year=1970).aget(budget=budget)
    exact = usd_to_units(fake_registry.cost("openai", "gpt-4o-mini", spec.usage))  # what each answer cost
    assert usage.spent_units == AFFORDED * exact <= usd_to_units(budget.limit_usd)
    assert usage.spent_tokens == AFFORDED * spec.usage.total_tokens <= budget.limit_tokens
    assert (usage.reserved_units, usage.reserved_tokens) == (0, 0)
    assert await aopen_reservations() == 0
    # No row is left running: refused runs are recorded as failed with the budget's code.
    rows = Counter([(e.status, e.error_code) async for e in AgentExecution.objects.all()])
    assert rows[("running", "")] == 0 and rows[("pending", "")] == 0
    assert rows[("completed", "")] == AFFORDED
