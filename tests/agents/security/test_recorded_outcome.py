"""The outcome a client is told is the outcome recorded on the row (ARCHITECTURE.md, security rules).

Each test lets the provider answer a moment after another process has ended the row or asked for it to be
cancelled, before the run's own watcher (which polls about once a second) notices. Before the fix the final
conditional UPDATE lost, the row said failed (or kept running with a cancel request and then completed),
and the client was told success anyway.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services.reaper import reap
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory
from tests.fakes.live_server import wait_until
from tests.fakes.server import Fault

# Shorter than the watcher's one-second poll: the answer arrives before the run notices the row changed.
PROVIDER_DELAY = 0.7


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0)


def _running_row() -> AgentExecution | None:
    return AgentExecution.objects.filter(status=ExecutionStatus.RUNNING).first()


def _post_in_thread(url: str, token: str, body: dict[str, Any], sink: dict[str, Any]) -> threading.Thread:
    def call() -> None:
        with httpx.Client(timeout=30) as client:
            response = client.post(url, json=body, headers={"Authorization": f"Token {token}"})
            sink["status"], sink["text"] = response.status_code, response.text

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _reap_now(row: AgentExecution) -> None:
    # As the reaper sees a row whose heartbeat and deadline are long past (its process looked dead).
    report = reap(timezone.now() + timedelta(hours=2), execution_id=row.pk)
    assert report.total == 1


def _request_cancel_elsewhere(row: AgentExecution) -> None:
    # A cancel request from another server process: only the flag, no in-process stop of this run.
    assert AgentExecution.objects.filter(pk=row.pk).update(cancel_requested_at=timezone.now()) == 1


@pytest.mark.parametrize(
    ("interfere", "status", "code"),
    [
        (_reap_now, ExecutionStatus.FAILED, "worker_lost"),
        (_request_cancel_elsewhere, "cancelled", "cancelled_by_user"),
    ],
    ids=["reaped", "cancel-requested"],
)
def test_execute_answers_what_the_row_records(
    live_server_url, fake_registry, fake_openai, alice, agent, interfere, status, code
):
    fake_openai.fail(Fault("slow_first_byte", delay=PROVIDER_DELAY))
    fake_openai.reply(text="an answer the row never records as completed")
    sink: dict[str, Any] = {}
    url = f"{live_server_url}/api/v1/agents/helper/execute/"
    thread = _post_in_thread(url, token_for(alice), {"input_data": {"task": "hi"}}, sink)
    assert wait_until(lambda: _running_row() is not None, timeout=5)
    interfere(_running_row())
    thread.join(30)

    body = json.loads(sink["text"])
    row = AgentExecution.objects.get(pk=body["execution_id"])
    assert row.status == status
    assert row.error_code == code
    assert sink["status"] == 502, body
    assert body["success"] is False
    assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("interfere", "event", "code"),
    [
        (_reap_now, "execution.failed", "worker_lost"),
        (_request_cancel_elsewhere, "execution.cancelled", None),
    ],
    ids=["reaped", "cancel-requested"],
)
def test_the_terminal_stream_event_is_what_the_row_records(
    live_server_url, fake_registry, fake_openai, alice, agent, interfere, event, code
):
    fake_openai.fail(Fault("slow_first_byte", delay=PROVIDER_DELAY))
    fake_openai.reply(text="streamed words")
    sink: dict[str, Any] = {}
    url = f"{live_server_url}/api/v1/agents/helper/execute/"
    thread = _post_in_thread(url, token_for(alice), {"input_data": {"task": "hi"}, "stream": True}, sink)
    assert wait_until(lambda: _running_row() is not None, timeout=5)
    interfere(_running_row())
    thread.join(30)

    events = [
        line.removeprefix("event: ") for line in sink["text"].splitlines() if line.startswith("event: ")
    ]
    assert events[-1] == event, sink["text"]
    assert "execution.completed" not in events
    row = AgentExecution.objects.get()
    assert row.status != ExecutionStatus.COMPLETED
    if code is not None:
        assert f'"code": "{code}"' in sink["text"] or f'"code":"{code}"' in sink["text"]


def test_chat_completions_answers_what_the_row_records(
    live_server_url, fake_registry, fake_openai, alice, agent
):
    fake_openai.fail(Fault("slow_first_byte", delay=PROVIDER_DELAY))
    fake_openai.reply(text="an answer the row never records as completed")
    sink: dict[str, Any] = {}
    token = token_for(alice)

    def call() -> None:
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{live_server_url}/v1/chat/completions",
                json={"model": "helper", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {token}"},
            )
            sink["status"], sink["body"] = response.status_code, response.json()

    thread = threading.Thread(target=call)
    thread.start()
    assert wait_until(lambda: _running_row() is not None, timeout=5)
    _reap_now(_running_row())
    thread.join(30)

    assert sink["status"] == 502, sink
    assert sink["body"]["error"]["code"] == "worker_lost"
    assert AgentExecution.objects.get().status == ExecutionStatus.FAILED
