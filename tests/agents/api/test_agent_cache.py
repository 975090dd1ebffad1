"""The agent a run request names is cached (apps/agents/agent_cache.py): a second run reads no agent row, and
the cache never shows an agent to someone the selector would refuse, nor outlives a change to it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.agents.api.conftest import post_json
from tests.factories import AgentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("every_auth_cache")]

BODY = {"input_data": {"task": "hi"}}


@pytest.fixture
def shared(alice):
    return AgentFactory(
        owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0, is_shared=True
    )


def run(client, key: str = "helper"):  # type: ignore[no-untyped-def]
    return post_json(client, f"/api/v1/agents/{key}/execute/", BODY)


def agent_reads(client, key: str = "helper") -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(status, SELECTs of the agent table) of one run request."""
    with CaptureQueriesContext(connection) as queries:
        status = run(client, key).status_code
    return status, sum('FROM "agents_agent"' in q["sql"] for q in queries.captured_queries)


def test_a_second_run_reads_no_agent_row_by_slug_or_uuid(fake_registry, fake_openai, alice_client, shared):
    assert agent_reads(alice_client) == (200, 1)
    assert agent_reads(alice_client) == (200, 0)
    assert agent_reads(alice_client, str(shared.pk)) == (200, 1)
    assert agent_reads(alice_client, str(shared.pk)) == (200, 0)


def test_a_warm_run_request_stays_within_its_queries(
    fake_registry, fake_openai, alice_client, shared, django_assert_max_num_queries
):
    assert run(alice_client).status_code == 200  # token and agent now cached
    # The budgets that apply, the INSERT in its savepoint (the admission's atomic block inside the test's
    # transaction), the final UPDATE: no agent or token read.
    with django_assert_max_num_queries(5) as queries:
        assert run(alice_client).status_code == 200
    assert not any("authtoken_token" in q["sql"] for q in queries.captured_queries)


def test_the_cache_can_be_turned_off(fake_registry, fake_openai, alice_client, shared, settings):
    settings.AGENT_CACHE_SECONDS = 0
    assert agent_reads(alice_client) == (200, 1)
    assert agent_reads(alice_client) == (200, 1)


def test_a_private_agent_cached_for_its_owner_stays_hidden_from_others(
    fake_registry, fake_openai, alice, alice_client, bob_client
):
    AgentFactory(owner=alice, agent_id="mine", preferred_platform="openai", max_retries=0)
    assert run(alice_client, "mine").status_code == 200
    assert run(bob_client, "mine").status_code == 404


@pytest.mark.parametrize(
    "key", ["x" * 5000, "..%2F..%2Fetc%2Fpasswd", "http%3A%2F%2F127.0.0.1%3A1%2F", "helper%00"]
)
@pytest.mark.filterwarnings("ignore::django.core.cache.backends.base.CacheKeyWarning")  # the lookup below
def test_a_hostile_key_is_a_404_and_is_never_cached(fake_registry, fake_openai, alice_client, shared, key):
    from django.core.cache import caches

    from apps.agents import agent_cache

    with CaptureQueriesContext(connection) as queries:
        assert run(alice_client, key).status_code == 404
    assert not any('FROM "agents_agent"' in q["sql"] for q in queries.captured_queries)
    assert caches["auth"].get(agent_cache._cache_key(key)) is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda agent: setattr(agent, "is_shared", False), id="unshared"),
        pytest.param(lambda agent: setattr(agent, "is_active", False), id="deactivated"),
    ],
)
def test_a_change_reaches_the_next_request_at_once(fake_registry, fake_openai, bob_client, shared, change):
    assert run(bob_client).status_code == 200  # cached
    change(shared)
    shared.save()
    assert run(bob_client).status_code == 404


def test_a_renamed_or_deleted_agent_is_gone_under_its_old_names(
    fake_registry, fake_openai, alice_client, shared
):
    pk = str(shared.pk)
    assert run(alice_client).status_code == 200
    assert run(alice_client, pk).status_code == 200
    shared.agent_id = "renamed"
    shared.save()
    assert run(alice_client).status_code == 404
    assert run(alice_client, "renamed").status_code == 200
    shared.delete()
    assert run(alice_client, "renamed").status_code == 404
    assert run(alice_client, pk).status_code == 404


def test_an_edit_is_run_at_once(fake_registry, fake_openai, alice_client, shared):
    assert run(alice_client).status_code == 200
    shared.system_prompt = "Answer in French."
    shared.save()
    assert run(alice_client).status_code == 200
    assert fake_openai.requests[-1].body["messages"][0]["content"].startswith("Answer in French.")
