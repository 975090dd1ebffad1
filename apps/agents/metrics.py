"""Prometheus metrics of agent runs, and `GET /metrics`.

Recorded in one place: `record_execution(execution)`, called by the execution engine's final write
(apps/agents/services/execution_records.record_outcome) once a run it holds has reached its terminal state.
Everything is derived from the recorded row, attempts included:

    agents_executions_total{agent,platform,status}       runs that ended, by outcome
    agents_execution_seconds{agent,platform,status}      histogram of run time (start to finish)
    agents_tokens_total{agent,platform,direction}        direction = input | output
    agents_cost_usd_total{agent,platform}                Decimal costs, exported as Prometheus floats
    agents_provider_attempt_seconds{platform,status}     histogram of each provider call (status: ok or why
                                                         it failed); skipped platforms made no call
    agents_retries_total{platform}                       calls repeated on the same platform after a failure
    agents_fallbacks_total{from,to}                      moves to the next platform after a failure or skip
    agents_cooldowns_total{platform}                     times a platform was skipped while cooling down
    agents_budget_refusals_total{budget,reason}          refusals by a budget (spend | concurrency)
    agents_budget_*{budget,scope,period}                 spend, holds and limits per budget (BudgetCollector)

`platform` is the platform that answered ("none" when none did). Rows ended by another process (the reaper's
`worker_lost`, a queued run cancelled before it started) made no provider calls here and are not counted.

The collectors live in a registry of our own (not prometheus_client's global one), so /metrics shows exactly
these. They are per process: under several uvicorn or Celery worker processes each keeps its own counts and
a scrape sees the one process that answered. Prometheus' multiprocess mode (PROMETHEUS_MULTIPROC_DIR) is not
wired up; run one web process per scrape target or scrape each process.

Access: a staff user (session or API token), or `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is
set (for a Prometheus server, which has no user). Anyone else: 401 (no or bad credentials) or 403 (not
staff), with the API's JSON error envelope.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from rest_framework import exceptions as drf
from rest_framework.authentication import TokenAuthentication, get_authorization_header

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
NAMESPACE = "agents"
NO_PLATFORM = "none"
# Attempts that made no network call: the platform was skipped.
SKIPPED = frozenset({"cooldown", "unavailable"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def _counter(name: str, documentation: str, labels: list[str]) -> Counter:
    return Counter(name, documentation, labels, namespace=NAMESPACE, registry=REGISTRY)


def _histogram(name: str, documentation: str, labels: list[str], *, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, documentation, labels, namespace=NAMESPACE, registry=REGISTRY, buckets=buckets)


EXECUTIONS = _counter("executions", "Agent runs that ended, by outcome.", ["agent", "platform", "status"])
EXECUTION_SECONDS = _histogram(
    "execution_seconds",
    "Run time of agent runs, from start to finish.",
    ["agent", "platform", "status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
TOKENS = _counter("tokens", "Tokens used by agent runs.", ["agent", "platform", "direction"])
COST = _counter("cost_usd", "Cost of agent runs in US dollars.", ["agent", "platform"])
ATTEMPT_SECONDS = _histogram(
    "provider_attempt_seconds",
    "Latency of each call to a provider, by how it ended.",
    ["platform", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)
RETRIES = _counter("retries", "Provider calls repeated on the same platform after a failure.", ["platform"])
FALLBACKS = _counter(
    "fallbacks", "Moves from one platform to the next after a failure or a skip.", ["from", "to"]
)
COOLDOWNS = _counter("cooldowns", "Times a platform was skipped because it was cooling down.", ["platform"])

BUDGET_REFUSALS = _counter(
    "budget_refusals",
    "Runs or attempts a budget refused (reason: spend or concurrency), before anything was sent.",
    ["budget", "reason"],
)


class BudgetCollector:
    """Spend per budget in its current period, read from the database at scrape time (so every process
    reports the same numbers, unlike the per-process counters above):

        agents_budget_spent_usd{budget,scope,period}     agents_budget_reserved_usd{...}
        agents_budget_spent_tokens{...}                  agents_budget_reserved_tokens{...}
        agents_budget_limit_usd{...}, agents_budget_limit_tokens{...} (budgets that have that limit)
        agents_budget_active_runs{...}
    """

    def describe(self) -> list[Any]:
        return []  # nothing at registration: collect() reads the database

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from apps.agents.budget_selectors import all_budgets

        labels = ["budget", "scope", "period"]
        families = {
            name: GaugeMetricFamily(f"{NAMESPACE}_budget_{name}", text, labels=labels)
            for name, text in (
                ("spent_usd", "USD spent in the budget's current period."),
                ("reserved_usd", "USD held by attempts in flight."),
                ("limit_usd", "The budget's USD limit per period."),
                ("spent_tokens", "Tokens used in the budget's current period."),
                ("reserved_tokens", "Tokens held by attempts in flight."),
                ("limit_tokens", "The budget's token limit per period."),
                ("active_runs", "Runs in flight within the budget's scope."),
            )
        }
        try:
            statuses = [status for status in all_budgets() if status.is_active]
        except Exception:  # a scrape must answer even when the database does not
            logger.exception("reading budgets for /metrics failed")
            statuses = []
        for status in statuses:
            values = [status.name, status.scope, status.period]
            families["spent_usd"].add_metric(values, float(status.spent_usd))
            families["reserved_usd"].add_metric(values, float(status.reserved_usd))
            families["spent_tokens"].add_metric(values, status.spent_tokens)
            families["reserved_tokens"].add_metric(values, status.reserved_tokens)
            families["active_runs"].add_metric(values, status.active_runs)
            if status.limit_usd is not None:
                families["limit_usd"].add_metric(values, float(status.limit_usd))
            if status.limit_tokens is not None:
                families["limit_tokens"].add_metric(values, status.limit_tokens)
        return list(families.values())


REGISTRY.register(BudgetCollector())  # type: ignore[arg-type]


def record_budget_refusal(budget: str, reason: str) -> None:
    BUDGET_REFUSALS.labels(budget or "unnamed", reason).inc()


def _field(attempt: Any, name: str) -> Any:
    return attempt.get(name) if isinstance(attempt, Mapping) else getattr(attempt, name, None)


def record_attempts(attempts: Iterable[Any]) -> None:
    """Attempt latencies, retries, fallbacks and cooldown skips of one run, from its attempts in order.

    The same rules as the engine's loop (apps/agents/engine/platform_calls.py): a call right after a failed call
    on the same platform is a retry; a call on another platform right after a failed or skipped one is a
    fallback (what the engine announces as `platform.fallback`). Two successful calls in a row (a summary then
    the answer, a tool loop, a re-ask) are neither.
    """
    previous: tuple[str, str] | None = None
    for attempt in attempts:
        platform = str(_field(attempt, "platform") or NO_PLATFORM)
        status = str(_field(attempt, "status") or "unknown")
        if status == "cooldown":
            COOLDOWNS.labels(platform).inc()
        if status not in SKIPPED:
            ATTEMPT_SECONDS.labels(platform, status).observe(float(_field(attempt, "latency_ms") or 0) / 1000)
            if previous is not None and previous[1] != "ok":
                if previous[0] == platform:
                    RETRIES.labels(platform).inc()
                else:
                    FALLBACKS.labels(previous[0], platform).inc()
        previous = (platform, status)


def record_execution(execution: Any) -> None:
    """Count a run that has just reached its terminal state (`execution` as the final write left it).

    Does nothing for a row that is not terminal (the final write lost a race with another process, which
    owns the outcome). Never raises: metrics must not break a run's bookkeeping.
    """
    try:
        status = str(execution.status)
        if status not in TERMINAL:
            return
        agent = execution.agent_slug or NO_PLATFORM
        platform = execution.platform_used or NO_PLATFORM
        EXECUTIONS.labels(agent, platform, status).inc()
        EXECUTION_SECONDS.labels(agent, platform, status).observe(float(execution.execution_time or 0.0))
        if execution.input_tokens:
            TOKENS.labels(agent, platform, "input").inc(execution.input_tokens)
        if execution.output_tokens:
            TOKENS.labels(agent, platform, "output").inc(execution.output_tokens)
        if execution.cost:
            COST.labels(agent, platform).inc(float(execution.cost))
        record_attempts(execution.attempts or ())
    except Exception:
        logger.exception(
            "recording metrics failed", extra={"execution_id": str(getattr(execution, "pk", "-"))}
        )


# -------------------------------------------------------------------------------- GET /metrics
def _error(status: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message}}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _metrics_token_matches(request: HttpRequest) -> bool:
    expected = str(getattr(settings, "METRICS_TOKEN", "") or "")
    if not expected:
        return False
    scheme, _, credentials = get_authorization_header(request).decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected.encode())


class _AnyTokenAuthentication(TokenAuthentication):
    """An API token under either scheme, `Token <key>` or `Bearer <key>`."""

    def authenticate(self, request: Any) -> Any:
        scheme = get_authorization_header(request).split(b" ", 1)[0].lower()
        self.keyword = "Bearer" if scheme == b"bearer" else "Token"
        return super().authenticate(request)


def _caller(request: HttpRequest) -> Any:
    """The staff-candidate user: from an API token when one is sent, else the session's (None: anonymous).
    Raises AuthenticationFailed for a token that is not valid."""
    if get_authorization_header(request):
        found = _AnyTokenAuthentication().authenticate(request)
        return found[0] if found is not None else None
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        response = _error(405, "method_not_allowed", "Use GET.")
        response["Allow"] = "GET"
        return response
    if not _metrics_token_matches(request):
        try:
            user = _caller(request)
        except drf.AuthenticationFailed:
            return _error(401, "authentication_failed", "Invalid token.")
        if user is None:
            return _error(401, "not_authenticated", "Staff credentials or the metrics token are required.")
        if not user.is_staff:
            return _error(403, "permission_denied", "Metrics are for staff only.")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
