"""A run's last settlement and its concurrency slot are written with its outcome (BudgetGuard.closing, one
transaction and, on PostgreSQL, one round trip), not by a write of their own before it. A settlement that
cannot be written never costs the run its recorded outcome: the reaper releases what it held."""

from __future__ import annotations

import importlib
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.agents.models import AgentExecution, Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import usd_to_units
from apps.agents.services import budgets as budget_services
from apps.agents.services.execution_engine import execution_engine as engine
from apps.agents.services.reaper import reap
from apps.platforms.base import Usage
from tests.agents.budgets.conftest import ausage_of
from tests.factories import AgentFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

# The module (the package's `state_manager` attribute is its instance).
state_module = importlib.import_module("apps.agents.services.state_manager")


@pytest.fixture
def agent(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(owner=alice, preferred_platform="openai", model="gpt-4o-mini", max_tokens=50)


@pytest.fixture
def budget(alice):  # type: ignore[no-untyped-def]
    return Budget.objects.create(
        scope="user", user=alice, period="total", limit_usd=Decimal("5"), max_concurrent=3
    )


async def test_the_last_settlement_and_the_slot_go_with_the_outcome_update(
    agent, budget, alice, fake_registry, fake_openai, monkeypatch
):
    separate: list[object] = []  # the ledger's own writes after the hold: close() (none expected)
    monkeypatch.setattr(budget_services, "apply", lambda releases: separate.append(releases))
    final_writes: list[list[str]] = []
    update_row, aupdate_row = state_module.update_row, state_module.aupdate_row

    def seen(values, along):  # type: ignore[no-untyped-def]
        if values.get("status") == "completed":
            statements = along() if along is not None else []
            final_writes.append([sql for sql, _ in statements])
            along = (lambda: statements) if statements else None
        return along

    def spied(model, pk, values, *, along=None, **kwargs):  # type: ignore[no-untyped-def]
        return update_row(model, pk, values, along=seen(values, along), **kwargs)

    async def aspied(model, pk, values, *, along=None, **kwargs):  # type: ignore[no-untyped-def]
        return await aupdate_row(model, pk, values, along=seen(values, along), **kwargs)

    # The final write is a unit (update_row) or, on PostgreSQL, sent from the event loop (aupdate_row).
    monkeypatch.setattr(state_module, "update_row", spied)
    monkeypatch.setattr(state_module, "aupdate_row", aspied)
    fake_openai.reply(Reply(input_tokens=13, output_tokens=12))

    result = await engine.execute_agent(agent, {"task": "hi"}, alice)

    assert result.success, result.error
    assert separate == []
    (statements,) = final_writes
    assert statements and all("budget" in sql for sql in statements)  # the settlement and the slot
    usage = await ausage_of(budget)
    spent = usd_to_units(fake_registry.cost("openai", "gpt-4o-mini", Usage(13, 12)))
    assert (usage.spent_tokens, usage.spent_units, usage.reserved_units, usage.active_runs) == (
        25,
        spent,
        0,
        0,
    )
    assert await BudgetReservation.objects.acount() == 0
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert (row.status, row.input_tokens, row.output_tokens) == ("completed", 13, 12)


async def test_a_settlement_that_cannot_be_written_leaves_the_outcome_recorded_and_the_hold_to_the_reaper(
    agent, budget, alice, fake_registry, fake_openai, monkeypatch, settings, caplog
):
    def broken(releases):  # type: ignore[no-untyped-def]
        raise RuntimeError("ledger down")

    monkeypatch.setattr(budget_services, "release_statements", broken)
    fake_openai.reply(Reply(input_tokens=13, output_tokens=12))

    result = await engine.execute_agent(agent, {"task": "hi"}, alice)

    assert result.success, result.error
    row = await AgentExecution.objects.aget(pk=result.execution_id)
    assert (row.status, row.input_tokens, row.output_tokens) == ("completed", 13, 12)
    assert "settling the run's reservations failed" in caplog.text
    assert await BudgetReservation.objects.acount() == 2  # the attempt's hold and the slot
    settings.EXECUTION_STALE_SECONDS = 30
    released = await sync_to_async(reap)(now=timezone.now() + timedelta(seconds=31))
    assert released.released == 2
    usage = await BudgetUsage.objects.aget(budget=budget)
    assert (usage.reserved_units, usage.active_runs) == (0, 0)
    assert usage.estimated_tokens > 0  # settled at its worst case
