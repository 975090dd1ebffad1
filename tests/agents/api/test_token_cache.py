"""The token -> user lookup is cached (api/authentication.py) and the cache never outlives a revocation:
a deleted token, a deactivated user, a replaced token all answer 401 on the very next request."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.agents.api.conftest import token_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("every_auth_cache")]

URL = "/api/v1/executions/"


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def token_queries(client: APIClient) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(URL).status_code == 200
    return sum("authtoken_token" in q["sql"] for q in queries.captured_queries)


def test_second_request_reads_no_token_row(alice):
    client = bearer(token_for(alice))
    assert token_queries(client) == 1
    assert token_queries(client) == 0


def test_cache_can_be_turned_off(alice, settings):
    settings.AUTH_CACHE_SECONDS = 0
    client = bearer(token_for(alice))
    assert token_queries(client) == 1
    assert token_queries(client) == 1


def test_deleted_token_is_refused_at_once(alice):
    key = token_for(alice)
    client = bearer(key)
    assert client.get(URL).status_code == 200
    Token.objects.filter(key=key).get().delete()
    assert client.get(URL).status_code == 401


def test_deactivated_user_is_refused_at_once(alice):
    client = bearer(token_for(alice))
    assert client.get(URL).status_code == 200
    alice.is_active = False
    alice.save()
    assert client.get(URL).status_code == 401


def test_staff_flag_change_is_seen_at_once(alice):
    client = bearer(token_for(alice))
    assert client.get(URL).status_code == 200
    cached_user = client.get(URL).wsgi_request.user
    assert not cached_user.is_staff
    alice.is_staff = True
    alice.save()
    assert client.get(URL).wsgi_request.user.is_staff


def test_unknown_key_is_never_cached(alice):
    assert bearer("0" * 40).get(URL).status_code == 401
    Token.objects.create(user=alice, key="0" * 40)
    assert bearer("0" * 40).get(URL).status_code == 200


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 100_000, id="huge"),
        pytest.param("../../etc/passwd", id="path"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="url"),
        pytest.param("é" * 40, id="not-ascii"),
    ],
)
def test_a_hostile_key_is_a_401_and_is_never_cached(alice, key):
    from django.core.cache import caches

    from apps.agents.api import authentication

    assert bearer(key).get(URL).status_code == 401
    assert not caches["auth"].has_key(authentication._cache_key(key))
    if hasattr(caches["auth"]._cache, "copies"):  # the near cache: no copy kept either
        assert (
            caches["auth"]._cache.copies.get(caches["auth"].make_key(authentication._cache_key(key))) is None
        )
