"""API test helpers: token-authenticated clients for alice, bob and a staff user (rate-limit counters are
emptied before every test by tests/conftest.py)."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    # PBKDF2 at Django's production cost is ~0.5 s per user here; these tests are not about hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def client_for(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def token_for(user) -> str:  # type: ignore[no-untyped-def]
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
async def headers(alice) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """alice's token header, and her agent "helper" on the fake OpenAI server (no retries): the execute
    route's tests (test_execute_route, test_loop_admission)."""
    from asgiref.sync import sync_to_async

    from tests.factories import AgentFactory

    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0
    )
    return {"Authorization": f"Token {await sync_to_async(token_for)(alice)}"}


@pytest.fixture
def staff(db):  # type: ignore[no-untyped-def]
    return UserFactory(username="staff", is_staff=True)


@pytest.fixture
def alice_client(alice) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(alice)


@pytest.fixture
def bob_client(bob) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(bob)


@pytest.fixture
def staff_client(staff) -> APIClient:  # type: ignore[no-untyped-def]
    return client_for(staff)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


def throttle_rates(**rates: str):  # type: ignore[no-untyped-def]
    """override_settings for rate limits only (the rest of REST_FRAMEWORK stays as configured)."""
    from django.conf import settings
    from django.test import override_settings

    merged = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates}
    return override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": merged})


def post_json(client, url: str, data, **extra):  # type: ignore[no-untyped-def]
    """POST `data` as JSON text with every non-ASCII character escaped, so that a lone surrogate (which no
    UTF-8 encoder accepts) reaches the server as the JSON escape a hostile client would send."""
    import json

    return client.generic(
        "POST", url, json.dumps(data, ensure_ascii=True), content_type="application/json", **extra
    )
