"""The console's server side with Django's test client: login, the page, its assets, the per-day endpoint."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse

from apps.agents.models import AgentExecution, ExecutionStatus
from apps.console.assets import ASSETS_DIR
from apps.console.selectors import executions_per_day
from tests.factories import AgentFactory, ExecutionFactory, UserFactory

PASSWORD = "pw-for-tests-123"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice_session(client, alice):  # type: ignore[no-untyped-def]
    client.force_login(alice)
    return client


def _created(execution: AgentExecution, when: datetime) -> None:
    # created_at is auto_now_add: set it afterwards, as a day in the past would have left it.
    AgentExecution.objects.filter(pk=execution.pk).update(created_at=when)


# ------------------------------------------------------------------------------- pages
@pytest.mark.django_db
def test_the_console_asks_anonymous_visitors_to_log_in(client) -> None:
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


@pytest.mark.django_db
def test_logging_in_lands_on_the_console(client, alice) -> None:
    page = client.get("/login/?next=/")
    assert page.status_code == 200
    assert b'autocomplete="current-password"' in page.content

    response = client.post("/login/", {"username": "alice", "password": PASSWORD, "next": "/"})

    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


@pytest.mark.django_db
def test_a_wrong_password_is_said_so_and_not_logged_in(client, alice) -> None:
    response = client.post("/login/", {"username": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert b'role="alert"' in response.content
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_a_login_redirect_never_leaves_the_site(client, alice) -> None:
    response = client.post(
        "/login/", {"username": "alice", "password": PASSWORD, "next": "https://evil.example/"}
    )

    assert response.status_code == 302 and response["Location"] == "/"


@pytest.mark.django_db
def test_logout_is_a_post_and_ends_the_session(alice_session) -> None:
    assert alice_session.get("/logout/").status_code == 405  # a link (or an <img>) cannot log you out

    response = alice_session.post("/logout/")

    assert response.status_code == 302 and response["Location"] == "/login/"
    assert alice_session.get("/").status_code == 302


@pytest.mark.django_db
def test_the_page_loads_only_local_assets_under_a_strict_policy(alice_session) -> None:
    response = alice_session.get("/")

    html = response.content.decode()
    policy = response["Content-Security-Policy"]
    assert (
        "default-src 'self'" in policy and "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    )
    # Every URL the page refers to is on this site: no CDN, no external font.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    # No inline script for the policy to block: the one script is a module file.
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/console/assets/console.js">']
    # The CSRF token the page's fetch() calls send.
    assert re.search(r'<meta name="csrf-token" content="[A-Za-z0-9]{32,}">', html)


# ------------------------------------------------------------------------------- assets
@pytest.mark.django_db
def test_every_asset_is_served_with_its_type_and_revalidated_by_etag(client) -> None:
    served = {path.name for path in ASSETS_DIR.iterdir()}
    assert {
        "console.js",
        "api.js",
        "sse.js",
        "chart.js",
        "dom.js",
        "executions.js",
        "format.js",
        "stats.js",
        "console.css",
        "icon.svg",
    } <= served
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in served:
        response = client.get(reverse("console:asset", args=[name]))
        assert response.status_code == 200, name
        assert response["Content-Type"].startswith(types[name[name.rindex(".") :]])
        assert response["Cache-Control"] == "no-cache"
        assert response.content == (ASSETS_DIR / name).read_bytes()
        again = client.get(reverse("console:asset", args=[name]), HTTP_IF_NONE_MATCH=response["ETag"])
        assert again.status_code == 304


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["nope.js", "..", "%2e%2e%2fsettings.py", "console.js%00"])
def test_unknown_assets_are_404(client, name) -> None:
    assert client.get(f"/console/assets/{name}").status_code == 404


# ------------------------------------------------------------------------------- executions per day
@pytest.mark.django_db
def test_executions_per_day_counts_each_day_and_fills_the_gaps() -> None:
    agent, other = AgentFactory(), AgentFactory()
    today = date(2026, 3, 10)
    noon = datetime(2026, 3, 10, 12, tzinfo=UTC)
    for status, when in [
        (ExecutionStatus.COMPLETED, noon),
        (ExecutionStatus.COMPLETED, noon.replace(hour=0, minute=0, second=1)),
        (ExecutionStatus.FAILED, noon.replace(hour=23, minute=59)),
        (ExecutionStatus.CANCELLED, noon - timedelta(days=2)),
        (ExecutionStatus.RUNNING, noon - timedelta(days=2)),
        (ExecutionStatus.COMPLETED, noon - timedelta(days=7)),  # before the window
        (ExecutionStatus.COMPLETED, noon + timedelta(days=1)),  # after it
    ]:
        _created(ExecutionFactory(agent=agent, status=status), when)
    _created(ExecutionFactory(agent=other, status=ExecutionStatus.COMPLETED), noon)

    days = executions_per_day(agent=agent, days=3, today=today)

    assert [(d.date.isoformat(), d.total, d.completed, d.failed, d.cancelled) for d in days] == [
        ("2026-03-08", 2, 0, 0, 1),
        ("2026-03-09", 0, 0, 0, 0),
        ("2026-03-10", 3, 2, 1, 0),
    ]


@pytest.mark.django_db
def test_days_follow_the_configured_time_zone(settings) -> None:
    settings.TIME_ZONE = "America/New_York"
    agent = AgentFactory()
    # 02:00 UTC on the 10th is still the evening of the 9th in New York.
    _created(ExecutionFactory(agent=agent), datetime(2026, 3, 10, 2, tzinfo=UTC))

    days = executions_per_day(agent=agent, days=2, today=date(2026, 3, 10))

    assert [(d.date.isoformat(), d.total) for d in days] == [("2026-03-09", 1), ("2026-03-10", 0)]


@pytest.mark.django_db
def test_daily_endpoint_answers_for_a_visible_agent(alice_session, alice) -> None:
    agent = AgentFactory(owner=alice, agent_id="alices-agent")
    ExecutionFactory(agent=agent, status=ExecutionStatus.COMPLETED)

    response = alice_session.get("/console/api/agents/alices-agent/daily/?days=5")

    assert response.status_code == 200
    body = response.json()
    assert body["agent"] == "alices-agent" and body["timezone"] == "UTC"
    assert len(body["days"]) == 5
    assert body["days"][-1] == {
        "date": date.today().isoformat(),
        "total": 1,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    # By UUID too, as everywhere in the API.
    assert alice_session.get(f"/console/api/agents/{agent.pk}/daily/").json()["agent"] == "alices-agent"


@pytest.mark.django_db
def test_daily_endpoint_hides_other_peoples_agents_and_needs_a_login(client, alice_session) -> None:
    bobs = AgentFactory(owner=UserFactory(username="bob"), agent_id="bobs-agent")

    assert alice_session.get("/console/api/agents/bobs-agent/daily/").json() == {
        "error": {"code": "not_found", "message": "Not found."}
    }
    assert alice_session.get(f"/console/api/agents/{bobs.pk}/daily/").status_code == 404
    alice_session.logout()
    anonymous = alice_session.get("/console/api/agents/bobs-agent/daily/")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["0", "91", "-1", "abc", "1e3", ""])
def test_daily_endpoint_refuses_bad_day_counts(alice_session, alice, days) -> None:
    AgentFactory(owner=alice, agent_id="alices-agent")

    response = alice_session.get(f"/console/api/agents/alices-agent/daily/?days={days}")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"days": ["days must be an integer from 1 to 90."]}
