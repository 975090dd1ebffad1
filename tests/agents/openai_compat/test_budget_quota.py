"""A budget refusal on /v1/chat/completions has OpenAI's `insufficient_quota` shape (429), which the official
SDK raises as RateLimitError with code insufficient_quota; nothing is sent to the provider."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from apps.agents.models import AgentExecution, Budget, BudgetUsage
from apps.agents.services.budgets import period_start
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_exhausted_budget_is_insufficient_quota(client_for, fake_registry, fake_openai, alice):
    AgentFactory(owner=alice, agent_id="quota-agent", preferred_platform="openai", max_retries=0)
    budget = Budget.objects.create(scope="user", user=alice, period="month", limit_usd=Decimal("1"))
    BudgetUsage.objects.create(
        budget=budget, period_start=period_start("month", timezone.now()), spent_units=10**10
    )
    with pytest.raises(openai.RateLimitError) as raised:
        client_for(alice).chat.completions.create(
            model="quota-agent", messages=[{"role": "user", "content": "hi"}]
        )
    error = raised.value
    assert error.status_code == 429
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert "user alice (month)" in error.message and "resets at" in error.message
    assert int(error.response.headers["Retry-After"]) > 0
    assert fake_openai.requests == [] and AgentExecution.objects.count() == 0
