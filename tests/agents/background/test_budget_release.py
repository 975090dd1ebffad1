"""Spend control with a real Celery worker: the budget reservation of a worker killed mid-call is settled
at its worst case by the reaper (tests/agents/budgets/ has the rest of the budget tests)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from apps.agents.models import Budget, BudgetReservation, BudgetUsage
from apps.agents.services.reaper import reap
from tests.agents.background.test_worker import _queue, _requests, _status_is
from tests.agents.background.waiting import execution_row, until
from tests.factories import AgentFactory
from tests.fakes.server import Fault

S_RUNNING, S_FAILED = "running", "failed"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
async def test_the_reservation_of_a_killed_worker_is_released_by_the_reaper(own_workers, fake_openai, alice):
    agent = await sync_to_async(AgentFactory)(
        owner=alice, preferred_platform="openai", max_retries=0, max_tokens=100
    )
    budget = await Budget.objects.acreate(
        scope="user", user=alice, period="month", limit_usd=Decimal("1"), max_concurrent=1
    )
    fake_openai.fail(Fault("slow_first_byte", delay=120))
    doomed = await asyncio.to_thread(own_workers.start, pool="solo", concurrency=1)
    try:
        execution = await _queue(agent, alice)
        await until(lambda: _requests(fake_openai))
        await until(lambda: _status_is(execution.pk, S_RUNNING))
        held = await BudgetUsage.objects.exclude(period_start__year=1970).aget(budget=budget)
        assert held.reserved_units > 0 and held.reserved_tokens > 0
        assert await BudgetReservation.objects.filter(execution_id=execution.pk).acount() == 2  # spend + slot
    finally:
        await asyncio.to_thread(doomed.kill)

    async def reaped():
        await sync_to_async(reap)()  # what beat does every REAPER_INTERVAL_SECONDS
        row = await execution_row(execution.pk)
        return row if row.is_terminal else None

    row = await until(reaped, every=0.5)
    assert (row.status, row.error_code) == (S_FAILED, "worker_lost")
    usage = await BudgetUsage.objects.exclude(period_start__year=1970).aget(budget=budget)
    assert (usage.reserved_units, usage.reserved_tokens) == (0, 0)
    # The provider may have billed the lost attempt: it is spent at its worst case, marked as estimated.
    assert usage.spent_units == usage.estimated_units == held.reserved_units
    assert usage.spent_tokens == usage.estimated_tokens == held.reserved_tokens
    slots = await BudgetUsage.objects.aget(budget=budget, period_start__year=1970)
    assert slots.active_runs == 0  # the concurrency slot is free again
    assert await BudgetReservation.objects.acount() == 0
