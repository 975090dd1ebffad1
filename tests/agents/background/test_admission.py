"""Admission of an execution: Idempotency-Key (same request once, reused key 422, racing duplicates make one
row) and one live execution per conversation (409)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.agents.errors import ApplicationError
from apps.agents.models import AgentExecution, Conversation, ExecutionStatus
from apps.agents.services.conversation_lock import (
    ConversationBusy,
    claim_conversation,
    release_conversation,
)
from apps.agents.services.idempotency import admit_execution, clean_key, request_hash
from tests.factories import AgentFactory, ConversationFactory, ExecutionFactory

BODY = {"input_data": {"task": "Say hello"}, "context": {}, "background": True}


def _admit(agent, user, *, key="key-1", body=BODY, conversation=None):
    return admit_execution(
        idempotency_key=key,
        request_hash=request_hash(body),
        agent=agent,
        user=user,
        input_data=body["input_data"],
        conversation=conversation,
        mode="background",
    )


def _race(n: int, work) -> list[object]:
    """Run `work` in n threads released at the same moment; each result or exception, in thread order."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_request_hash_ignores_key_order_and_whitespace():
    assert request_hash({"a": 1, "b": [1, {"c": "é"}]}) == request_hash({"b": [1, {"c": "é"}], "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})
    assert len(request_hash({})) == 64


def test_clean_key():
    assert clean_key(None) is None
    assert clean_key("   ") is None
    assert clean_key(" k1 ") == "k1"
    with pytest.raises(ApplicationError) as info:
        clean_key("x" * 256)
    assert info.value.code == "invalid_idempotency_key"
    with pytest.raises(ApplicationError):
        clean_key("bad\x00key")


@pytest.mark.django_db
def test_same_key_same_body_returns_the_first_execution(alice):
    agent = AgentFactory(owner=alice)
    first = _admit(agent, alice)
    again = _admit(
        agent, alice, body={"background": True, "context": {}, "input_data": {"task": "Say hello"}}
    )
    assert first.created and not again.created
    assert again.execution.pk == first.execution.pk
    assert AgentExecution.objects.count() == 1


@pytest.mark.django_db
def test_same_key_different_body_is_422_and_creates_nothing(alice):
    agent = AgentFactory(owner=alice)
    _admit(agent, alice)
    with pytest.raises(ApplicationError) as info:
        _admit(agent, alice, body={**BODY, "input_data": {"task": "Something else"}})
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")
    assert AgentExecution.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_user_and_optional(alice, bob):
    agent = AgentFactory(owner=alice, is_shared=True)
    a, b = _admit(agent, alice), _admit(agent, bob)
    assert a.execution.pk != b.execution.pk
    n1, n2 = _admit(agent, alice, key=None), _admit(agent, alice, key=None)
    assert n1.created and n2.created and n1.execution.pk != n2.execution.pk


@pytest.mark.django_db
def test_a_key_older_than_24h_starts_afresh(alice):
    agent = AgentFactory(owner=alice)
    old = _admit(agent, alice).execution
    AgentExecution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))
    new = _admit(agent, alice, body={**BODY, "input_data": {"task": "new day"}})
    assert new.created and new.execution.pk != old.pk
    assert AgentExecution.objects.get(pk=old.pk).idempotency_key is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_requests_make_exactly_one_row(alice):
    agent = AgentFactory(owner=alice)
    results = _race(8, lambda i: _admit(agent, alice, key="racing"))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.created for r in results) == 1
    assert len({r.execution.pk for r in results}) == 1
    assert AgentExecution.objects.filter(idempotency_key="racing").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_a_reused_key_one_wins_the_rest_get_422(alice):
    agent = AgentFactory(owner=alice)
    results = _race(
        6, lambda i: _admit(agent, alice, key="k", body={**BODY, "input_data": {"task": f"t{i}"}})
    )
    created = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(created) == 1 and created[0].created
    assert {(e.status, e.code) for e in errors} == {(422, "idempotency_key_reused")}


# ---------------------------------------------------------------- one run per conversation


@pytest.mark.django_db
def test_second_live_run_on_a_conversation_is_409_and_leaves_no_row(alice):
    conversation = ConversationFactory(owner=alice)
    first = _admit(conversation.agent, alice, key=None, conversation=conversation)
    with pytest.raises(ConversationBusy) as info:
        _admit(conversation.agent, alice, key="second", conversation=conversation)
    assert (info.value.status, info.value.code) == (409, "conversation_busy")
    assert info.value.fields == {"active_execution_id": str(first.execution.pk)}
    assert AgentExecution.objects.count() == 1
    # The key was not used up: the same request succeeds once the conversation is free.
    AgentExecution.objects.filter(pk=first.execution.pk).update(status=ExecutionStatus.COMPLETED)
    assert _admit(conversation.agent, alice, key="second", conversation=conversation).created


@pytest.mark.django_db
def test_a_finished_holder_frees_the_conversation_even_if_never_released(alice):
    conversation = ConversationFactory(owner=alice)
    held = ExecutionFactory(
        agent=conversation.agent, conversation=conversation, status=ExecutionStatus.FAILED
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_execution=held)
    nxt = ExecutionFactory(agent=conversation.agent, conversation=conversation)
    claim_conversation(conversation.pk, nxt.pk)
    assert Conversation.objects.get(pk=conversation.pk).active_execution_id == nxt.pk


@pytest.mark.django_db
def test_release_only_by_the_holder(alice):
    conversation = ConversationFactory(owner=alice)
    holder = ExecutionFactory(
        agent=conversation.agent, conversation=conversation, status=ExecutionStatus.RUNNING
    )
    other = ExecutionFactory(agent=conversation.agent, conversation=conversation)
    claim_conversation(conversation.pk, holder.pk)
    claim_conversation(conversation.pk, holder.pk)  # idempotent for the holder
    assert not release_conversation(conversation.pk, other.pk)
    assert release_conversation(conversation.pk, holder.pk)
    assert Conversation.objects.get(pk=conversation.pk).active_execution_id is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_on_one_conversation_exactly_one_is_admitted(alice):
    conversation = ConversationFactory(owner=alice)
    results = _race(8, lambda i: _admit(conversation.agent, alice, key=f"k{i}", conversation=conversation))
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(admitted) == 1, results
    assert all(isinstance(r, ConversationBusy) for r in refused), refused
    assert AgentExecution.objects.count() == 1
    assert Conversation.objects.get(pk=conversation.pk).active_execution_id == admitted[0].execution.pk


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_after_a_finished_holder_exactly_one_wins(alice):
    """The compare-and-swap on the old holder: several claimers all see it finished; one swaps."""
    conversation = ConversationFactory(owner=alice)
    old = ExecutionFactory(
        agent=conversation.agent, conversation=conversation, status=ExecutionStatus.COMPLETED
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_execution=old)
    rows = [ExecutionFactory(agent=conversation.agent, conversation=conversation) for _ in range(6)]
    AgentExecution.objects.filter(pk__in=[r.pk for r in rows]).update(status=ExecutionStatus.RUNNING)
    results = _race(6, lambda i: claim_conversation(conversation.pk, rows[i].pk))
    assert sum(r is None for r in results) == 1, results
    assert all(isinstance(r, ConversationBusy) for r in results if r is not None)
