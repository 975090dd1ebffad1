"""GET /metrics: counters move when executions run (real runs against the fake providers, scraped over HTTP and
parsed with prometheus_client's own parser), how attempts turn into retries / fallbacks / cooldowns, and who
may read it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client, override_settings
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from apps.agents import metrics
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory, ExecutionFactory, UserFactory
from tests.fakes.server import Fault

METRICS_TOKEN = "metrics-secret-for-tests"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def scrape() -> Callable[[], Awaitable[Samples]]:
    """GET /metrics with the metrics token, parsed."""

    async def get() -> Samples:
        with override_settings(METRICS_TOKEN=METRICS_TOKEN):
            response = await AsyncClient().get(
                "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            )
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        return parse(response.content.decode())

    return get


@pytest.fixture
def instant_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(engine, "sleep", sleep)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -------------------------------------------------------------------------------- counters move
@pytest.mark.django_db(transaction=True)
async def test_counters_move_with_a_retry_a_fallback_and_a_cooldown(
    scrape, fake_registry, fake_openai, fake_anthropic, alice, instant_sleep
):
    agent = await sync_to_async(AgentFactory)(owner=alice, agent_id="metered", preferred_platform="openai")
    before = await scrape()

    # Run 1: openai fails once (503), its retry answers.
    fake_openai.fail(Fault("status", status=503))
    fake_openai.reply(text="first", input_tokens=100, output_tokens=20)
    first = await engine.execute_agent(agent, {"task": "one"}, alice)
    # Run 2: openai fails three times (the call and two retries), anthropic answers; openai cools down.
    fake_openai.fail(Fault("status", status=500), times=3)
    fake_anthropic.reply(text="second", input_tokens=30, output_tokens=5)
    second = await engine.execute_agent(agent, {"task": "two"}, alice)
    # Run 3: openai is skipped without a call (cooldown), anthropic answers.
    fake_anthropic.reply(text="third", input_tokens=1, output_tokens=1)
    third = await engine.execute_agent(agent, {"task": "three"}, alice)
    after = await scrape()

    assert (first.success, second.success, third.success) == (True, True, True)
    assert (first.platform_used, second.platform_used, third.platform_used) == (
        "openai",
        "anthropic",
        "anthropic",
    )

    completed = {"agent": "metered", "status": "completed"}
    assert delta(after, before, "agents_executions_total", platform="openai", **completed) == 1
    assert delta(after, before, "agents_executions_total", platform="anthropic", **completed) == 2
    assert delta(after, before, "agents_retries_total", platform="openai") == 1 + 2
    assert delta(after, before, "agents_fallbacks_total", **{"from": "openai", "to": "anthropic"}) == 2
    assert delta(after, before, "agents_cooldowns_total", platform="openai") == 1
    assert (
        delta(after, before, "agents_tokens_total", agent="metered", platform="openai", direction="input")
        == 100
    )
    assert (
        delta(after, before, "agents_tokens_total", agent="metered", platform="openai", direction="output")
        == 20
    )
    assert (
        delta(after, before, "agents_tokens_total", agent="metered", platform="anthropic", direction="input")
        == 31
    )
    cost = delta(after, before, "agents_cost_usd_total", agent="metered", platform="anthropic")
    assert cost == pytest.approx(float(second.cost + third.cost)) and cost > 0
    # Histograms: one observation per run, one per provider call (skipped platforms made none).
    count = "agents_execution_seconds_count"
    assert delta(after, before, count, agent="metered", platform="anthropic", status="completed") == 2
    attempts = "agents_provider_attempt_seconds_count"
    assert delta(after, before, attempts, platform="openai", status="ok") == 1
    assert delta(after, before, attempts, platform="openai", status="server_error") == 4
    assert delta(after, before, attempts, platform="anthropic", status="ok") == 2
    assert delta(after, before, attempts, platform="openai", status="cooldown") == 0


@pytest.mark.django_db(transaction=True)
async def test_a_failed_run_is_counted_as_failed_without_a_platform(
    scrape, fake_registry, fake_openai, fake_anthropic, fake_gemini, alice, instant_sleep
):
    agent = await sync_to_async(AgentFactory)(owner=alice, agent_id="doomed", preferred_platform="openai")
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=401))  # not retried, falls back; nobody answers
    before = await scrape()

    result = await engine.execute_agent(agent, {"task": "x"}, alice)

    after = await scrape()
    assert not result.success
    assert (
        delta(after, before, "agents_executions_total", agent="doomed", platform="none", status="failed") == 1
    )
    assert delta(after, before, "agents_retries_total", platform="openai") == 0
    assert delta(after, before, "agents_fallbacks_total", **{"from": "openai", "to": "anthropic"}) == 1
    assert delta(after, before, "agents_fallbacks_total", **{"from": "anthropic", "to": "gemini"}) == 1


# -------------------------------------------------------------------------------- attempts -> counters
def attempt(platform: str, status: str, latency_ms: float = 10.0) -> dict[str, Any]:
    return {"platform": platform, "model": "m", "status": status, "latency_ms": latency_ms}


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Counter changes made by a block (counters are per process and outlive a test)."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.series = series
        self.before = [sample(name, **labels) for name, labels in series]

    def __call__(self) -> list[float]:
        return [
            sample(name, **labels) - then
            for (name, labels), then in zip(self.series, self.before, strict=True)
        ]


def test_two_successful_calls_in_a_row_are_neither_a_retry_nor_a_fallback():
    moved = Deltas(
        ("agents_retries_total", {"platform": "p1"}),
        ("agents_fallbacks_total", {"from": "p2", "to": "p1"}),
        ("agents_provider_attempt_seconds_count", {"platform": "p1", "status": "ok"}),
    )
    # A conversational run: the summary call, then the answer; a tool loop looks the same.
    metrics.record_attempts([attempt("p1", "ok"), attempt("p1", "ok")])
    # A second call that restarts the chain on another platform after a success is not a fallback either.
    metrics.record_attempts([attempt("p2", "ok"), attempt("p1", "ok")])
    assert moved() == [0, 0, 3]


def test_a_call_after_a_failure_on_the_same_platform_is_a_retry():
    moved = Deltas(("agents_retries_total", {"platform": "r1"}))
    metrics.record_attempts([attempt("r1", "rate_limited"), attempt("r1", "timeout"), attempt("r1", "ok")])
    assert moved() == [2]


def test_a_skipped_platform_counts_as_the_fallback_origin_like_the_engines_event():
    moved = Deltas(
        ("agents_fallbacks_total", {"from": "q-anthropic", "to": "q-gemini"}),
        ("agents_fallbacks_total", {"from": "q-openai", "to": "q-anthropic"}),
        ("agents_cooldowns_total", {"platform": "q-anthropic"}),
        ("agents_provider_attempt_seconds_count", {"platform": "q-anthropic", "status": "cooldown"}),
        ("agents_provider_attempt_seconds_sum", {"platform": "q-gemini", "status": "ok"}),
    )
    # Engine: openai failed -> anthropic skipped (cooldown) -> gemini; it announces anthropic -> gemini.
    metrics.record_attempts(
        [
            attempt("q-openai", "server_error"),
            attempt("q-anthropic", "cooldown"),
            attempt("q-gemini", "ok", 10.0),
        ]
    )
    assert moved() == pytest.approx([1, 0, 1, 0, 0.01])


@pytest.mark.django_db
def test_a_row_that_is_not_terminal_is_not_counted():
    execution = ExecutionFactory(status="running", agent_slug="racer", platform_used="openai")
    before = sample("agents_executions_total", agent="racer", platform="openai", status="running")
    metrics.record_execution(execution)  # the final write lost a race: someone else owns the outcome
    assert (
        sample("agents_executions_total", agent="racer", platform="openai", status="running") == before == 0
    )


@pytest.mark.django_db
def test_recording_never_raises():
    execution = ExecutionFactory(status="completed", agent_slug="weird", cost=Decimal("0.5"))
    execution.attempts = [None]  # nonsense attempts must not break the run's bookkeeping
    metrics.record_execution(execution)


# -------------------------------------------------------------------------------- access
def token_header(user) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}


@pytest.mark.django_db
def test_anonymous_is_401_json():
    response = Client().get("/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_a_user_who_is_not_staff_is_403(alice):
    response = Client().get("/metrics", headers=token_header(alice))
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"


@pytest.mark.django_db
def test_staff_by_token_or_session_may_read(alice):
    staff = UserFactory(username="staff", is_staff=True)
    assert Client().get("/metrics", headers=token_header(staff)).status_code == 200
    bearer = {"Authorization": token_header(staff)["Authorization"].replace("Token", "Bearer")}
    assert Client().get("/metrics", headers=bearer).status_code == 200
    browser = Client()
    browser.force_login(staff)
    response = browser.get("/metrics")
    assert response.status_code == 200 and b"# TYPE agents_executions_total counter" in response.content
    browser.force_login(alice)
    assert browser.get("/metrics").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("configured", "sent", "status"),
    [
        (METRICS_TOKEN, METRICS_TOKEN, 200),
        (METRICS_TOKEN, "wrong", 401),
        (METRICS_TOKEN, "", 401),
        ("", "", 401),  # no token configured: an empty bearer is not a match
    ],
)
def test_the_metrics_token(configured, sent, status):
    with override_settings(METRICS_TOKEN=configured):
        response = Client().get("/metrics", headers={"Authorization": f"Bearer {sent}"})
    assert response.status_code == status


@pytest.mark.django_db
def test_only_get():
    staff = UserFactory(username="staff", is_staff=True)
    response = Client().post("/metrics", headers=token_header(staff))
    assert response.status_code == 405
