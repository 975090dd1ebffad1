"""Refusals over HTTP (429 budget_exceeded with Retry-After, nothing written, nothing sent), the usage and
staff budget endpoints, `manage.py set_budget`, the default budget, and the deployment limits."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.agents.models import AgentExecution, Budget, BudgetUsage
from apps.agents.services.budgets import period_start
from tests.agents.api.conftest import client_for, post_json
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory, UserFactory
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0, max_tokens=50
    )


def execute(client, body=None, key="helper"):  # type: ignore[no-untyped-def]
    return post_json(client, f"/api/v1/agents/{key}/execute/", body or {"input_data": {"task": "hi"}})


def spend_all(budget: Budget) -> None:
    BudgetUsage.objects.create(
        budget=budget,
        period_start=period_start(budget.period, timezone.now()),
        spent_units=10**15 if budget.limit_usd is not None else 0,
        spent_tokens=budget.limit_tokens or 0,
    )


def test_an_exhausted_budget_refuses_before_any_row_with_429(
    fake_registry, fake_openai, alice_client, alice, agent
):
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_usd=Decimal("0.5"))
    spend_all(budget)
    before = timezone.now()
    response = execute(alice_client)
    after = timezone.now()
    error = assert_envelope(response, 429, "budget_exceeded")
    assert "user alice (day)" in error["message"] and "0.5 USD per day" in error["message"]
    assert "resets at" in error["message"]
    # The server rounds the seconds left up at some instant between before and after.
    tomorrow = period_start("day", before) + timedelta(days=1)
    seconds_left = int(response["Retry-After"])
    assert seconds_left > 0
    assert math.floor((tomorrow - after).total_seconds()) <= seconds_left
    assert seconds_left <= math.ceil((tomorrow - before).total_seconds())
    assert AgentExecution.objects.count() == 0
    assert fake_openai.requests == []


def test_a_total_budget_says_it_never_resets(fake_registry, alice_client, alice, agent):
    budget = Budget.objects.create(scope="agent", agent=agent, period="total", limit_tokens=100)
    spend_all(budget)
    error = assert_envelope(execute(alice_client), 429, "budget_exceeded")
    assert "never resets" in error["message"] and "100 tokens in total" in error["message"]


def test_background_runs_are_refused_up_front_too(fake_registry, alice_client, alice, agent):
    spend_all(Budget.objects.create(scope="deployment", period="month", limit_usd=Decimal("1")))
    response = execute(alice_client, {"input_data": {"task": "hi"}, "background": True})
    assert_envelope(response, 429, "budget_exceeded")
    assert AgentExecution.objects.count() == 0


@pytest.mark.django_db(transaction=True)
async def test_a_queued_run_that_its_budget_no_longer_affords_fails_budget_exceeded(
    fake_registry, fake_openai, alice, agent
):
    from apps.agents.services.execution_engine import execution_engine as engine

    pending = await engine.create_pending(agent, {"task": "hi"}, alice)
    await Budget.objects.acreate(scope="user", user=alice, period="day", limit_tokens=1)
    result = await engine.run_execution(pending.pk)
    assert result.error.code == "budget_exceeded"
    row = await AgentExecution.objects.aget(pk=pending.pk)
    assert (row.status, row.error_code) == ("failed", "budget_exceeded")
    assert fake_openai.requests == []


def test_a_concurrency_limit_refuses_a_second_run(fake_registry, alice_client, alice, agent):
    budget = Budget.objects.create(scope="user", user=alice, period="day", max_concurrent=1)
    BudgetUsage.objects.create(
        budget=budget, period_start=period_start("total", timezone.now()), active_runs=1
    )
    error = assert_envelope(execute(alice_client), 429, "budget_exceeded")
    assert "allows 1 runs at once" in error["message"]


def test_a_budget_of_another_user_does_not_apply(fake_registry, fake_openai, alice_client, bob, agent):
    spend_all(Budget.objects.create(scope="user", user=bob, period="day", limit_usd=Decimal("0")))
    assert execute(alice_client).status_code == 200


def test_usage_shows_spend_reservations_and_limits_per_budget(
    fake_registry, fake_openai, alice_client, alice, bob, agent
):
    Budget.objects.create(scope="user", user=alice, period="month", limit_usd=Decimal("2"), max_concurrent=3)
    Budget.objects.create(scope="user", user=bob, period="month", limit_usd=Decimal("9"))
    fake_openai.reply(Reply(input_tokens=100, output_tokens=20))
    assert execute(alice_client).status_code == 200
    body = alice_client.get("/api/v1/usage/").json()
    assert [b["name"] for b in body["budgets"]] == ["user alice (month)"]
    mine = body["budgets"][0]
    assert mine["spent_tokens"] == 120 and Decimal(mine["spent_usd"]) > 0
    assert Decimal(mine["reserved_usd"]) == 0 and mine["active_runs"] == 0
    assert Decimal(mine["remaining_usd"]) == Decimal("2") - Decimal(mine["spent_usd"])
    assert mine["limit_usd"] == "2.0000000000" and mine["max_concurrent"] == 3
    assert mine["resets_at"] is not None


def test_the_default_budget_applies_to_every_user(
    fake_registry, fake_openai, alice_client, alice, agent, settings
):
    settings.BUDGET_DEFAULT_USER = {"tokens": 10_000, "period": "day", "max_concurrent": 2}
    before = alice_client.get("/api/v1/usage/").json()["budgets"]
    assert [(b["id"], b["from_default"], b["limit_tokens"]) for b in before] == [(None, True, 10_000)]
    assert execute(alice_client).status_code == 200
    budget = Budget.objects.get(user=alice)
    assert (budget.from_default, budget.limit_tokens, budget.max_concurrent) == (True, 10_000, 2)
    assert BudgetUsage.objects.get(budget=budget, period_start__year__gt=1970).spent_tokens == 18


def test_staff_lists_and_sets_budgets_others_may_not(staff_client, alice_client, alice, agent):
    response = post_json(
        staff_client, "/api/v1/budgets/", {"user": "alice", "period": "day", "limit_usd": "3.5"}
    )
    assert response.status_code == 201, response.content
    again = post_json(
        staff_client, "/api/v1/budgets/", {"user": "alice", "period": "day", "limit_tokens": 500}
    )
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
    assert (again.json()["limit_usd"], again.json()["limit_tokens"]) == ("3.5000000000", 500)
    agent_budget = post_json(
        staff_client,
        "/api/v1/budgets/",
        {"user": "alice", "agent": "helper", "period": "total", "max_concurrent": 1},
    )
    assert agent_budget.json()["scope"] == "user_agent"
    listed = staff_client.get("/api/v1/budgets/").json()["budgets"]
    assert len(listed) == 2
    assert_envelope(alice_client.get("/api/v1/budgets/"), 403, "permission_denied")
    assert_envelope(
        post_json(alice_client, "/api/v1/budgets/", {"period": "day", "limit_usd": "99"}),
        403,
        "permission_denied",
    )
    bad = post_json(staff_client, "/api/v1/budgets/", {"user": "nobody", "period": "day"})
    assert assert_envelope(bad, 400, "invalid")["fields"] == {"user": ["No such user."]}
    negative = post_json(staff_client, "/api/v1/budgets/", {"period": "week", "limit_usd": "-1"})
    assert set(assert_envelope(negative, 400, "invalid")["fields"]) == {"period", "limit_usd"}


def test_set_budget_command(alice, agent):
    out = StringIO()
    call_command(
        "set_budget", "--user", "alice", "--usd", "5", "--period", "day", "--max-concurrent", "2", stdout=out
    )
    assert "created budget" in out.getvalue()
    call_command(
        "set_budget", "--user", "alice", "--period", "day", "--tokens", "1000", "--usd", "none", stdout=out
    )
    budget = Budget.objects.get(user=alice, period="day")
    assert (budget.limit_usd, budget.limit_tokens, budget.max_concurrent) == (None, 1000, 2)
    call_command("set_budget", "--agent", "helper", "--period", "month", "--usd", "10", stdout=out)
    call_command("set_budget", "--deployment", "--period", "total", "--usd", "100", stdout=out)
    assert set(Budget.objects.values_list("scope", flat=True)) == {"user", "agent", "deployment"}
    call_command("set_budget", "--list", stdout=out)
    assert "agent helper (month)" in out.getvalue()
    with pytest.raises(CommandError, match="no user"):
        call_command("set_budget", "--user", "nobody", "--period", "day", "--usd", "1")
    with pytest.raises(CommandError, match="--usd"):
        call_command("set_budget", "--user", "alice", "--period", "day", "--usd", "lots")


# ------------------------------------------------------------------ deployment limits
def test_agent_writes_are_checked_against_the_deployment_limits(alice_client, settings):
    settings.MAX_OUTPUT_TOKENS = 1000
    settings.MODEL_ALLOWLIST = {"openai": ["gpt-4o-mini"]}
    settings.NON_STAFF_MAX_RETRIES = 3
    settings.NON_STAFF_MAX_TIMEOUT_SECONDS = 300
    base = {"name": "A", "agent_id": "limited", "preferred_platform": "openai"}
    for field, value in [
        ("max_tokens", 1001),
        ("model", "gpt-4o"),
        ("max_retries", 4),
        ("timeout_seconds", 301),
    ]:
        response = post_json(alice_client, "/api/v1/agents/", {**base, field: value})
        assert response.status_code == 400, response.content
        assert set(response.json()["error"]["fields"]) == {field}
    ok = post_json(alice_client, "/api/v1/agents/", {**base, "model": "gpt-4o-mini", "max_tokens": 1000})
    assert ok.status_code == 201, ok.content


def test_the_service_refuses_what_the_serializer_did_not_see(alice, settings):
    """The admin and the catalog write through the service, which checks the same limits."""
    from apps.agents.errors import ApplicationError
    from apps.agents.services.agents import agent_create

    settings.NON_STAFF_MAX_RETRIES = 1
    with pytest.raises(ApplicationError) as raised:
        agent_create(owner=alice, data={"name": "A", "agent_id": "svc-limited", "max_retries": 2})
    assert raised.value.code == "limit_exceeded" and set(raised.value.fields) == {"max_retries"}


def test_the_schema_states_the_deployment_limits(alice_client, settings):
    settings.NON_STAFF_MAX_TIMEOUT_SECONDS = 321
    schema = alice_client.get("/api/schema/?format=json").json()
    fields = schema["components"]["schemas"]["AgentInputRequest"]["properties"]
    assert fields["timeout_seconds"]["maximum"] == 321
    assert fields["max_tokens"]["maximum"] == settings.MAX_OUTPUT_TOKENS


def test_staff_agents_may_exceed_the_non_staff_ceilings(staff_client, settings):
    settings.NON_STAFF_MAX_RETRIES = 1
    settings.MODEL_ALLOWLIST = {"openai": ["gpt-4o-mini"]}
    body = {
        "name": "S",
        "agent_id": "staffed",
        "preferred_platform": "openai",
        "model": "gpt-4o",
        "max_retries": 5,
    }
    assert post_json(staff_client, "/api/v1/agents/", body).status_code == 201


def test_limits_tightened_after_an_agent_was_saved_refuse_its_runs(
    fake_registry, fake_openai, alice_client, agent, settings
):
    settings.MAX_OUTPUT_TOKENS = 10
    response = execute(alice_client)
    assert assert_envelope(response, 400, "limit_exceeded")["fields"] == {
        "max_tokens": ["at most 10 on this deployment (MAX_OUTPUT_TOKENS)"]
    }
    assert fake_openai.requests == [] and AgentExecution.objects.count() == 0


def test_a_budgeted_run_always_sends_a_max_tokens(fake_registry, fake_openai, alice_client, alice, settings):
    settings.MAX_OUTPUT_TOKENS = 777
    AgentFactory(
        owner=alice, agent_id="open-ended", preferred_platform="openai", max_retries=0, max_tokens=None
    )
    Budget.objects.create(scope="user", user=alice, period="day", limit_usd=Decimal("5"))
    assert execute(alice_client, key="open-ended").status_code == 200
    assert (
        fake_openai.requests[0].body.get(
            "max_tokens", fake_openai.requests[0].body.get("max_completion_tokens")
        )
        == 777
    )


def test_another_users_client_is_not_charged_to_alice(fake_registry, fake_openai, alice, agent):
    carol = UserFactory(username="carol")
    agent.is_shared = True
    agent.save()
    budget = Budget.objects.create(scope="user", user=alice, period="day", limit_usd=Decimal("5"))
    assert execute(client_for(carol)).status_code == 200
    assert not BudgetUsage.objects.filter(budget=budget).exists()


def test_metrics_count_refusals_and_export_spend_per_budget(
    fake_registry, fake_openai, alice_client, staff_client, alice, agent
):
    from apps.agents.metrics import BUDGET_REFUSALS

    Budget.objects.create(scope="user", user=alice, period="day", limit_tokens=1000)
    fake_openai.reply(Reply(input_tokens=30, output_tokens=10))
    assert execute(alice_client).status_code == 200
    refusals = BUDGET_REFUSALS.labels("all of us", "spend")
    before = refusals._value.get()
    spend_all(
        Budget.objects.create(scope="deployment", period="month", limit_usd=Decimal("1"), name="all of us")
    )
    assert execute(alice_client).status_code == 429
    assert refusals._value.get() == before + 1
    text = staff_client.get("/metrics").content.decode()
    assert f'agents_budget_refusals_total{{budget="all of us",reason="spend"}} {before + 1}' in text
    assert 'agents_budget_spent_tokens{budget="user alice (day)",period="day",scope="user"} 40.0' in text
    assert 'agents_budget_limit_tokens{budget="user alice (day)",period="day",scope="user"} 1000.0' in text


def test_the_console_has_a_budgets_panel_fed_by_the_usage_endpoint(client, alice):
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert 'id="usage-table"' in page and "Budgets" in page
    script = client.get("/console/assets/usage.js")
    assert script.status_code == 200 and b"usage/" in script.content
    assert b'from "./usage.js"' in client.get("/console/assets/console.js").content
    # The session that shows the page may read the endpoint the panel loads.
    assert client.get("/api/v1/usage/").status_code == 200
