"""The one watcher per process (services/run_watcher.py): heartbeats and cancel polls for every open run of
the process in one query each, instead of one query per run per poll."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings
from django.utils import timezone

from apps.agents.engine.events import ExecutionCompleted
from apps.agents.models import AgentExecution
from apps.agents.models import ExecutionStatus as S
from apps.agents.services import run_watcher
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory, ExecutionFactory
from tests.fakes.server import Reply


@pytest.mark.django_db
def test_one_query_asks_about_every_run_and_one_more_beats_them(django_assert_num_queries):
    long_ago = timezone.now() - timedelta(hours=1)
    live = ExecutionFactory.create_batch(5, status=S.RUNNING, heartbeat_at=long_ago)
    flagged = ExecutionFactory(status=S.RUNNING, heartbeat_at=long_ago, cancel_requested_at=timezone.now())
    reaped = ExecutionFactory(agent=live[0].agent, status=S.FAILED, heartbeat_at=long_ago)
    ids = [str(row.pk) for row in [*live, flagged, reaped]]

    with django_assert_num_queries(1):
        assert run_watcher.unwanted(ids, beat=False) == {str(flagged.pk), str(reaped.pk)}
    with django_assert_num_queries(2):
        assert run_watcher.unwanted(ids, beat=True) == {str(flagged.pk), str(reaped.pk)}

    beaten = set(AgentExecution.objects.filter(heartbeat_at__gt=long_ago).values_list("pk", flat=True))
    assert beaten == {row.pk for row in live}  # only the runs still wanted


@pytest.mark.django_db(transaction=True)
@override_settings(EXECUTION_HEARTBEAT_SECONDS=0.1)  # the poll follows it down to 0.1 s
async def test_concurrent_runs_of_one_process_share_each_poll(fake_registry, fake_openai, alice, monkeypatch):
    agent = await sync_to_async(AgentFactory)(owner=alice, preferred_platform="openai", max_retries=0)
    for _ in range(3):
        fake_openai.reply(Reply(text="one two three four five six", chunk_delay=0.15))
    polls: list[list[str]] = []
    real = run_watcher._unwanted

    async def recorded(ids, *, beat):
        polls.append(sorted(ids))
        return await real(ids, beat=beat)

    monkeypatch.setattr(run_watcher, "_unwanted", recorded)

    async def one_run() -> list:
        return [event async for event in engine.execute_streaming(agent, {"task": "count"}, alice)]

    runs = await asyncio.gather(*(one_run() for _ in range(3)))

    assert all(isinstance(events[-1], ExecutionCompleted) for events in runs)
    ids = sorted(str(events[0].execution_id) for events in runs)
    # Each poll asked about every open run at once: never one query per run.
    assert ids in polls
    assert all(len(set(poll)) == len(poll) for poll in polls)
    rows = [row async for row in AgentExecution.objects.filter(pk__in=ids)]
    assert all(row.heartbeat_at > row.started_at for row in rows)
