"""Login lockout on every login path (API token, console, admin), over HTTP through the project's ASGI app
(config.asgi.application: our inline middleware and axes' async middleware, as uvicorn runs them).

The client's real address is the connection's (httpx's ASGITransport `client`); X-Forwarded-For changes on
every request, as an attacker's would, and counts only from a proxy in TRUSTED_PROXIES.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from subprocess import PIPE

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async

from config.asgi import application
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-for-tests-123"  # UserFactory's
LIMIT = 5
ATTACKER = "198.51.100.7"
ELSEWHERE = "192.0.2.44"
_forged = itertools.count(1)


def forged_header() -> dict[str, str]:
    """A new X-Forwarded-For on every request."""
    n = next(_forged)
    return {"X-Forwarded-For": f"203.0.{n // 250}.{n % 250 + 1}"}


@pytest.fixture(autouse=True)
def _login_settings(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.TRUSTED_PROXIES = []


@pytest.fixture
def staff_user(db):  # type: ignore[no-untyped-def]
    return UserFactory(username="root", is_staff=True)


def client_at(address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


class LoginPath:
    """One login path: how to try a password and how its answers read."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url

    async def attempt(self, client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
        if self.name == "api":
            return await client.post(
                self.url, json={"username": username, "password": password}, headers=forged_header()
            )
        page = await client.get(self.url)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf, page.text[:500]
        form = {"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1), "next": "/"}
        return await client.post(self.url, data=form, headers=forged_header())

    def assert_refused(self, response: httpx.Response) -> None:
        """A wrong password, before any lockout."""
        if self.name == "api":
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "invalid_credentials"
        else:
            assert response.status_code == 200, response.text  # the form again, with its error
            assert "sessionid" not in response.cookies

    def assert_locked(self, response: httpx.Response) -> None:
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"] == "900"
        assert "sessionid" not in response.cookies
        if self.name == "api":
            assert response.json() == {
                "error": {
                    "code": "locked_out",
                    "message": "Too many failed logins for this username or from this address. "
                    "Logins are refused for 15 minutes.",
                }
            }
        else:
            assert response.headers["Content-Type"].startswith("text/html")
            assert "Login refused" in response.text and "15 minutes" in response.text

    def assert_logged_in(self, response: httpx.Response) -> None:
        if self.name == "api":
            assert response.status_code == 200, response.text
            assert len(response.json()["token"]) == 40
        else:
            assert response.status_code == 302, response.text
            assert "sessionid" in response.cookies


LOGIN_PATHS = [
    LoginPath("api", "/api/v1/auth/token/"),
    LoginPath("console", "/login/"),
    LoginPath("admin", "/admin/login/"),
]


def _user_for(path: LoginPath, alice, staff_user):  # type: ignore[no-untyped-def]
    # The admin lets only staff in, so its right password is a staff user's.
    return staff_user if path.name == "admin" else alice


@pytest.mark.parametrize("path", LOGIN_PATHS, ids=lambda p: p.name)
async def test_repeated_failures_lock_the_username_whatever_the_forwarded_header_says(
    path: LoginPath, alice, bob, staff_user
) -> None:
    user = _user_for(path, alice, staff_user)
    async with client_at(ATTACKER) as attacker:
        for _ in range(LIMIT - 1):
            path.assert_refused(await path.attempt(attacker, user.username, "wrong-password"))
        path.assert_locked(await path.attempt(attacker, user.username, "wrong-password"))
        # The right password is refused too while locked, from this address...
        path.assert_locked(await path.attempt(attacker, user.username, PASSWORD))
    # ...and from any other: the username itself is locked.
    async with client_at(ELSEWHERE) as elsewhere:
        path.assert_locked(await path.attempt(elsewhere, user.username, PASSWORD))
    if path.name != "admin":  # bob is not staff: the admin never lets him in anyway
        async with client_at("192.0.2.45") as bobs:
            path.assert_logged_in(await path.attempt(bobs, "bob", PASSWORD))


@pytest.mark.parametrize("path", LOGIN_PATHS, ids=lambda p: p.name)
async def test_the_address_lock_is_keyed_on_the_connection_not_on_x_forwarded_for(
    path: LoginPath, alice, bob, staff_user
) -> None:
    """A new username and a new X-Forwarded-For on every try: were the header believed, every try would be
    a new address and a new username, and nothing would ever lock."""
    user = _user_for(path, alice, staff_user)
    async with client_at(ATTACKER) as attacker:
        for n in range(LIMIT - 1):
            path.assert_refused(await path.attempt(attacker, f"guess-{n}", "wrong-password"))
        path.assert_locked(await path.attempt(attacker, f"guess-{LIMIT}", "wrong-password"))
        path.assert_locked(await path.attempt(attacker, user.username, PASSWORD))
    async with client_at(ELSEWHERE) as elsewhere:
        path.assert_logged_in(await path.attempt(elsewhere, user.username, PASSWORD))


async def test_a_forwarded_header_counts_only_from_a_configured_proxy(alice, bob, settings) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    api = LOGIN_PATHS[0]
    async with client_at("10.0.0.3") as proxy:
        for n in range(LIMIT):
            # The proxy appends the address it saw; anything left of it is the client's own claim.
            response = await proxy.post(
                api.url,
                json={"username": f"guess-{n}", "password": "x"},
                headers={"X-Forwarded-For": f"1.1.1.{n}, 203.0.113.9"},
            )
        api.assert_locked(response)
        # Another client behind the same proxy is not locked; the one that guessed is.
        ok = await proxy.post(
            api.url,
            json={"username": "bob", "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.10"},
        )
        api.assert_logged_in(ok)
        locked = await proxy.post(
            api.url,
            json={"username": "bob", "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        api.assert_locked(locked)
    # From anyone who is not a trusted proxy the header is ignored: 192.0.2.60 is not 203.0.113.10.
    async with client_at("192.0.2.60") as direct:
        for n in range(LIMIT):
            response = await direct.post(
                api.url,
                json={"username": f"other-{n}", "password": "x"},
                headers={"X-Forwarded-For": "203.0.113.10"},
            )
        api.assert_locked(response)
    async with client_at("10.0.0.3") as proxy:
        ok = await proxy.post(
            api.url,
            json={"username": "alice", "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.10"},
        )
        api.assert_logged_in(ok)


async def test_a_failed_login_is_logged_with_username_and_address_never_the_password(alice, caplog) -> None:
    caplog.set_level(logging.INFO)
    secret = "hunter2-Secret-Guess"
    async with client_at(ATTACKER) as attacker:
        await LOGIN_PATHS[0].attempt(attacker, "alice", secret)
        await LOGIN_PATHS[1].attempt(attacker, "alice", secret)

    failures = [r.getMessage() for r in caplog.records if "login failure" in r.getMessage()]
    assert len(failures) == 2, [r.getMessage() for r in caplog.records]
    for line in failures:
        assert '"username": "alice"' in line and f'"address": "{ATTACKER}"' in line
    assert secret not in caplog.text


async def test_the_api_throttle_is_keyed_on_the_real_address(settings) -> None:
    """DRF's own throttle identity read X-Forwarded-For from anyone: a new header was a new budget."""
    from django.core.cache import cache

    from tests.agents.api.conftest import throttle_rates

    cache.clear()  # the rate-limit counters of earlier tests
    with throttle_rates(anon="3/min"):
        async with client_at(ATTACKER) as attacker:
            statuses = [
                (await attacker.get("/api/v1/health/", headers=forged_header())).status_code for _ in range(4)
            ]
    assert 429 not in statuses[:3] and statuses[3] == 429


async def test_logins_are_counted_in_redis_across_processes_when_redis_url_is_set(bob, settings) -> None:
    """Another process (a second server) fails five logins from one address; with REDIS_URL set, this one
    refuses bob's right password from that address."""
    from axes.handlers.proxy import AxesProxyHandler

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/10"
    prefix = f"test-logins-{uuid.uuid4().hex}:"
    other_process = f"""
import django
django.setup()
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.test import RequestFactory
assert settings.AXES_HANDLER == "axes.handlers.cache.AxesCacheHandler", settings.AXES_HANDLER
for n in range({LIMIT}):
    request = RequestFactory().post("/api/v1/auth/token/", REMOTE_ADDR="{ATTACKER}")
    # What authenticate() sends for a wrong password (without a database to look the user up in).
    user_login_failed.send(sender="other-process", credentials={{"username": f"nobody-{{n}}"}}, request=request)
print("locked" if request.axes_locked_out else "not locked")
"""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": url,
        "REDIS_KEY_PREFIX": prefix,
        "LOGIN_FAILURE_LIMIT": str(LIMIT),
    }
    env.pop("DATABASE_URL", None)  # never touches the database: counters live in Redis
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", other_process, cwd=REPO, env=env, stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "locked"

    settings.AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
    settings.AXES_CACHE = "logins"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "logins": {
            "BACKEND": "config.redis_cache.SharedRedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"{prefix}logins",
        },
        "auth": settings.CACHES["auth"],
        "throttle": settings.CACHES["throttle"],
    }
    await sync_to_async(AxesProxyHandler.get_implementation)(force=True)
    api = LOGIN_PATHS[0]
    try:
        async with client_at(ATTACKER) as attacker:
            api.assert_locked(await attacker.post(api.url, json={"username": "bob", "password": PASSWORD}))
        async with client_at(ELSEWHERE) as elsewhere:
            api.assert_logged_in(
                await elsewhere.post(api.url, json={"username": "bob", "password": PASSWORD})
            )
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    assert keys, "the counters were not in Redis"
