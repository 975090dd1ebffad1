"""Spend-control helpers: budgets built to afford an exact number of attempts, and their recorded usage."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from apps.agents.engine.spend import AttemptSpec, attempt_spec, guess_first_attempt
from apps.agents.models import Budget, BudgetReservation, BudgetUsage
from apps.agents.models_budget import units_to_usd
from apps.platforms.base import ChatMessage, CompletionRequest

SYSTEM = "You are a helpful assistant."


def worst_case(
    task: str, *, platform: str = "openai", model: str = "gpt-4o-mini", max_tokens: int
) -> AttemptSpec:
    """The reservation the engine makes for a task agent's first attempt on `task`."""
    request = CompletionRequest(
        model=model, messages=(ChatMessage("user", task),), system_prompt=SYSTEM, max_tokens=max_tokens
    )
    return attempt_spec(platform, request, output_cap=max_tokens)


def admission_guess(  # type: ignore[no-untyped-def]
    agent, task: str, *, platform: str = "openai", model: str = "gpt-4o-mini", max_tokens: int
) -> AttemptSpec:
    """What a run of `agent` on `task` holds with its row (the admission's guess of its first attempt, which
    that attempt keeps when it is covered: services/budgets.py AdmissionHold)."""
    from apps.agents.services.execution_prepare import agent_config

    return guess_first_attempt(
        platform, model, agent_config(agent), {"task": task}, None, output_cap=max_tokens
    )


def cost_units(registry, spec: AttemptSpec) -> int:  # type: ignore[no-untyped-def]
    """What the guard reserves for `spec` (its worst-case rates), in units of 1e-10 USD."""
    from apps.agents.services.budget_rates import rates_for

    return rates_for(registry).units(spec.platform, spec.model, spec.usage)


def usage_of(budget: Budget) -> BudgetUsage:
    return (
        BudgetUsage.objects.exclude(period_start__year=1970).get(budget=budget)
        if budget.period != "total"
        else (BudgetUsage.objects.get(budget=budget))
    )


ausage_of = sync_to_async(usage_of)


async def aopen_reservations() -> int:
    return await BudgetReservation.objects.acount()


def usd(units: int) -> Decimal:
    return units_to_usd(units)


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    """The async ORM's worker thread keeps its own connection; close it after each test, or PostgreSQL
    refuses to drop the test database at the end ("being accessed by other users")."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def staff(db):  # type: ignore[no-untyped-def]
    from tests.factories import UserFactory

    return UserFactory(username="staff", is_staff=True)


@pytest.fixture
def alice_client(alice):  # type: ignore[no-untyped-def]
    from tests.agents.api.conftest import client_for

    return client_for(alice)


@pytest.fixture
def staff_client(staff):  # type: ignore[no-untyped-def]
    from tests.agents.api.conftest import client_for

    return client_for(staff)
