"""The execute route outside Django's handler (apps/agents/api/execute_route.py), over real HTTP: what it
answers is what Django and DRF answer for the same request, what it does not answer reaches Django with
nothing counted or written, and a client that leaves is handled as Django's path handles it."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.utils import timezone
from rest_framework.settings import api_settings

import config.asgi
from apps.agents.api import execute_route, throttling
from apps.agents.api.throttling import parse_rate
from apps.agents.models import Agent, AgentExecution, Budget, BudgetUsage, ExecutionStatus
from apps.agents.services.budgets import period_start
from tests.agents.api.conftest import throttle_rates
from tests.factories import AgentFactory
from tests.fakes.live_server import async_wait_until
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/agents/helper/execute/"
BODY = {"input_data": {"task": "hi"}}
# Values that differ between two runs of the same request.
VOLATILE_FIELDS = {"execution_id", "execution_time", "links"}
VOLATILE_HEADERS = {"date", "server", "content-length"}


@pytest.fixture
def django_calls(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The paths of the requests the route handed to Django."""
    calls: list[str] = []
    django = config.asgi.application.app

    async def counted(scope, receive, send):  # type: ignore[no-untyped-def]
        calls.append(scope["path"])
        await django(scope, receive, send)

    monkeypatch.setattr(config.asgi.application, "app", counted)
    return calls


def shape(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    """Status, body and headers, without what differs between two runs (ids, times, dates). A body that is
    not JSON (an event stream, a page) is known by its type only: it names its run's id."""
    try:
        body = response.json()
    except ValueError:
        body = response.headers.get("content-type")
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key not in VOLATILE_FIELDS}
        if isinstance(body.get("metadata"), dict):
            body["metadata"] = {k: v for k, v in body["metadata"].items() if "time" not in k}
    kept = {name: value for name, value in response.headers.items() if name not in VOLATILE_HEADERS}
    return response.status_code, body, kept


async def post(base: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("json", BODY)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await client.post(kwargs.pop("url", URL), headers=headers, **kwargs)


async def both_paths(monkeypatch, send):  # type: ignore[no-untyped-def]
    """`send()` with the route on, then with it off (Django answers): both answers. `django_calls` keeps only
    what the route handed to Django while it was on."""
    by_route = await send()
    with monkeypatch.context() as off:
        off.setattr(config.asgi.application, "enabled", False)
        off.setattr(config.asgi.application, "app", config.asgi.django_application)
        by_django = await send()
    return by_route, by_django


async def test_a_plain_run_is_answered_by_the_route_as_django_answers_it(
    live_server_url, fake_registry, fake_openai, headers, django_calls, monkeypatch
):
    fake_openai.reply(text="Hello", input_tokens=12, output_tokens=3)
    fake_openai.reply(text="Hello", input_tokens=12, output_tokens=3)

    by_route, by_django = await both_paths(monkeypatch, lambda: post(live_server_url, headers))

    assert django_calls == []  # the route answered
    assert by_route.status_code == 200
    assert by_route.json()["output"] == "Hello"
    assert shape(by_route) == shape(by_django)
    assert {"x-frame-options", "x-content-type-options", "referrer-policy", "allow", "vary"} <= set(
        by_route.headers
    )
    rows = [row async for row in AgentExecution.objects.order_by("created_at")]
    assert [(row.status, row.tokens_used, row.mode) for row in rows] == [
        (ExecutionStatus.COMPLETED, 15, "sync")
    ] * 2


@pytest.mark.parametrize(
    ("fault", "status"),
    [(Fault("status", status=500), 502), (Fault("malformed_json"), 502)],
)
async def test_a_failed_run_answers_as_django_does(
    live_server_url, fake_registry, fake_openai, fake_anthropic, fake_gemini, headers, django_calls, monkeypatch,
    fault, status, caplog,
):  # fmt: skip
    async def send() -> httpx.Response:
        for fake in (fake_openai, fake_anthropic, fake_gemini):  # no platform left to fall back to
            fake.fail(fault, times=3)
        return await post(live_server_url, headers)

    by_route, by_django = await both_paths(monkeypatch, send)

    assert django_calls == []
    assert by_route.status_code == status
    assert by_route.json()["success"] is False
    assert shape(by_route) == shape(by_django)
    logged = [
        r for r in caplog.records if r.name == "django.request" and r.getMessage() == f"Bad Gateway: {URL}"
    ]
    assert len(logged) == 2  # django.request's line, by the route and by Django alike


async def test_refusals_after_the_rate_is_counted_are_answered_by_the_route_as_by_django(
    live_server_url, fake_registry, fake_openai, headers, django_calls, monkeypatch
):
    """A reused Idempotency-Key (422), an inactive agent (409): the request counted against the rate limits,
    so the route answers, in the one envelope."""
    fake_openai.reply(text="first")
    keyed = {**headers, "Idempotency-Key": "key-1"}
    assert (await post(live_server_url, keyed)).status_code == 200
    reused = await both_paths(
        monkeypatch, lambda: post(live_server_url, keyed, json={"input_data": {"task": "other"}})
    )
    agent = await Agent.objects.aget(agent_id="helper")
    agent.is_active = False
    await agent.asave()  # the agent cache forgets it (apps/agents/agent_cache.py)
    inactive = await both_paths(monkeypatch, lambda: post(live_server_url, headers))

    assert django_calls == []
    for (by_route, by_django), (status, code) in zip(
        (reused, inactive), ((422, "idempotency_key_reused"), (409, "agent_inactive")), strict=True
    ):
        assert (by_route.status_code, by_route.json()["error"]["code"]) == (status, code)
        assert shape(by_route) == shape(by_django)


async def test_a_budget_with_no_room_is_refused_by_the_route_as_by_django(
    live_server_url, fake_registry, fake_openai, headers, alice, django_calls, monkeypatch
):
    budget = await Budget.objects.acreate(scope="user", user=alice, period="day", limit_usd=Decimal("0"))
    for window in ("day", "total"):  # an admission refuses only in windows that have their row
        await BudgetUsage.objects.acreate(budget=budget, period_start=period_start(window, timezone.now()))

    by_route, by_django = await both_paths(monkeypatch, lambda: post(live_server_url, headers))

    assert django_calls == []
    assert (by_route.status_code, by_route.json()["error"]["code"]) == (429, "budget_exceeded")
    assert shape(by_route) == shape(by_django)
    assert fake_openai.requests == []


async def test_the_rate_limit_refusal_is_the_route_s_and_counted_once(
    live_server_url, fake_registry, fake_openai, headers, django_calls
):
    fake_openai.reply(text="one")
    with throttle_rates(execute="1/min"):
        first = await post(live_server_url, headers)
        refused = await post(live_server_url, headers)

    assert (first.status_code, refused.status_code) == (200, 429)
    assert refused.json()["error"]["code"] == "throttled"
    assert int(refused.headers["retry-after"]) >= 1
    assert django_calls == []


NOT_PLAIN = {
    "no token": ({"Authorization": ""}, {}, 401),
    "unknown token": ({"Authorization": "Token nope"}, {}, 401),
    "token with three parts": ({"Authorization": "Token a b"}, {}, 401),
    "token not ASCII": ({"Authorization": "Token caf\xe9".encode("latin-1")}, {}, 401),
    "token of 10,000 characters": ({"Authorization": "Token " + "k" * 10_000}, {}, 401),
    "another user's agent": ({}, {"url": "/api/v1/agents/bobs/execute/"}, 404),
    "no such agent": ({}, {"url": "/api/v1/agents/nobody/execute/"}, 404),
    "empty body": ({"Content-Type": "application/json"}, {"json": None, "content": b""}, 400),
    "form body": ({"Content-Type": "text/plain"}, {"json": None, "content": b"task=hi"}, 415),
    "too large": ({}, {"json": {"input_data": {"task": "x" * 1_100_000}}}, 400),
    "html wanted": ({"Accept": "text/html"}, {}, 200),
    "a query string": ({}, {"url": URL + "?format=json"}, 200),
    "host not allowed": ({"Host": "evil.example"}, {}, 400),
    "stream": ({}, {"json": {**BODY, "stream": True}}, 200),
    "background": ({}, {"json": {**BODY, "background": True}}, 202),
    "stream and background": ({}, {"json": {**BODY, "stream": True, "background": True}}, 400),
}


@pytest.mark.parametrize("case", list(NOT_PLAIN))
async def test_what_the_route_does_not_answer_reaches_django_uncounted_and_unwritten(
    live_server_url, fake_registry, fake_openai, headers, bob, django_calls, monkeypatch, settings, case
):
    """Django's answer, the same as with the route off, the user's rate counted once, no row but a run's."""
    await sync_to_async(AgentFactory)(owner=bob, agent_id="bobs", preferred_platform="openai")
    extra_headers, extra, status = NOT_PLAIN[case]
    fake_openai.reply(text="streamed")
    fake_openai.reply(text="streamed")

    async def send() -> httpx.Response:
        caches["throttle"].clear()
        return await post(live_server_url, {**headers, **extra_headers}, **extra)

    by_route, by_django = await both_paths(monkeypatch, send)
    counters = await sync_to_async(_user_counters)(await _alice_id(headers))

    assert django_calls, (by_route.status_code, by_route.text[:300])  # handed over
    assert by_route.status_code == status
    assert shape(by_route)[:2] == shape(by_django)[:2]
    # Counted once, by DRF (not at all where Django or DRF refuse before counting: a bad Host, a 401).
    assert counters == ([] if status == 401 or case == "host not allowed" else [1])

    async def settled() -> bool:  # a background run goes on after its answer
        return not await AgentExecution.objects.filter(status__in=["pending", "running"]).aexists()

    assert await async_wait_until(settled, limit=10)


async def _alice_id(headers: dict[str, str]) -> int:
    from rest_framework.authtoken.models import Token

    token = await Token.objects.aget(key=headers["Authorization"].split()[1])
    return token.user_id


def _user_counters(user_id: int) -> list[int]:
    """The user's count in the current window of its "user" rate (api/throttling.py), as a list: [] if none."""
    _allowed, period = parse_rate(api_settings.DEFAULT_THROTTLE_RATES["user"])
    window = int(throttling.time.time() // period)  # the throttles' clock (pinned by tests/conftest.py)
    count = caches["throttle"].get(f"throttle:user:user:{user_id}:{window}")
    return [] if count is None else [int(count)]


JSON_HEADERS = {"Content-Type": "application/json"}
DEEP = b'{"input_data": ' + b"[" * 200 + b"]" * 200 + b"}"
BAD_BODIES = {
    "invalid": ({}, {"json": {"input_data": {}}}, "invalid", "input_data.task"),
    "not JSON": (JSON_HEADERS, {"json": None, "content": b"{nope"}, "parse_error", None),
    "not an object": (JSON_HEADERS, {"json": None, "content": b"[1]"}, "invalid", "non_field_errors"),
    "too deep": (JSON_HEADERS, {"json": None, "content": DEEP}, "too_deep", None),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_a_bad_body_is_refused_by_the_route_as_by_django_and_parsed_once(
    live_server_url, fake_registry, headers, django_calls, monkeypatch, case
):
    """Counted against the rate (as DRF counts before it reads the body), then the 400 with the field named,
    in the one envelope; Django never parses it again."""
    extra_headers, extra, code, field = BAD_BODIES[case]

    async def send() -> httpx.Response:
        caches["throttle"].clear()
        return await post(live_server_url, {**headers, **extra_headers}, **extra)

    by_route, by_django = await both_paths(monkeypatch, send)
    counters = await sync_to_async(_user_counters)(await _alice_id(headers))

    assert django_calls == []
    assert (by_route.status_code, by_route.json()["error"]["code"]) == (400, code)
    assert field is None or field in by_route.json()["error"]["fields"]
    assert shape(by_route) == shape(by_django)

    assert counters == [1]
    assert not await AgentExecution.objects.aexists()


async def test_a_stream_or_background_request_goes_to_django_without_the_route_s_admission(
    live_server_url, fake_registry, fake_openai, headers, django_calls, monkeypatch
):
    """Read off the body's bytes: not authenticated, looked up and validated twice. A body that names the key
    only in an escaped spelling is found out by the route's validation, and handed over all the same."""
    validated: list[str] = []  # the route's validation of the body (in its thread or on the loop alike)
    body = execute_route._body

    def counted(request):  # type: ignore[no-untyped-def]
        validated.append(request.path)
        return body(request)

    monkeypatch.setattr(execute_route, "_body", counted)
    fake_openai.reply(text="streamed")
    fake_openai.reply(text="streamed")
    streamed = await post(live_server_url, headers, json={**BODY, "stream": True})
    escaped = await post(
        live_server_url, {**headers, "Content-Type": "application/json"}, json=None,
        content=b'{"input_data": {"task": "hi"}, "str\\u0065am": true}',
    )  # fmt: skip

    assert (streamed.status_code, escaped.status_code) == (200, 200)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert escaped.headers["content-type"].startswith("text/event-stream")
    assert django_calls == [URL, URL]
    assert validated == [URL]  # the escaped one only


async def test_a_client_that_leaves_mid_run_cancels_it(
    live_server_url, fake_registry, fake_openai, headers, django_calls
):
    fake_openai.fail(Fault("hang"))
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        request = asyncio.ensure_future(client.post(URL, json=BODY, headers=headers))
        assert await async_wait_until(lambda: len(fake_openai.requests) == 1, limit=10)
        request.cancel()  # closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await request

    async def cancelled() -> bool:
        row = await AgentExecution.objects.afirst()
        return row is not None and row.status == ExecutionStatus.CANCELLED

    assert await async_wait_until(cancelled, limit=10)
    assert django_calls == []


def test_the_route_is_off_with_other_middleware_or_persistent_connections(settings, monkeypatch):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    assert not execute_route.ExecuteRoute._enabled()
    settings.MIDDLEWARE = list(settings.SHIPPED_MIDDLEWARE)
    assert execute_route.ExecuteRoute._enabled()
    settings.EXECUTE_ROUTE = False
    assert not execute_route.ExecuteRoute._enabled()
    settings.EXECUTE_ROUTE = True
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 60)
    assert not execute_route.ExecuteRoute._enabled()
