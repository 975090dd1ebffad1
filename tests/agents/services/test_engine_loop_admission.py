"""ExecutionEngine's own entry points (execute_agent, open_stream: the /v1 facade, run_agent, in-process
callers) admit a run on the event loop when nothing in the admission needs a thread
(apps/agents/services/loop_admission.py), recording the row as the thread's admission does; the rest go to
their unit as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from apps.agents.errors import ApplicationError
from apps.agents.models import AgentExecution, ExecutionStatus
from apps.agents.services import loop_admission
from apps.agents.services.execution_engine import execution_engine as engine
from tests.factories import AgentFactory, ConversationFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_writes_only")]

ROW_FIELDS = (
    "status", "mode", "agent_id", "agent_slug", "user_id", "conversation_id", "input_data", "context",
    "idempotency_key", "request_hash", "input_tokens", "output_tokens", "cost", "output", "error_code",
)  # fmt: skip


@pytest.fixture(autouse=True)
async def _close_orm_thread_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def units(monkeypatch) -> list[str]:
    """The modes of the admissions made in a unit (a thread); the others went on the loop."""
    admitted: list[str] = []
    unit = engine._admit_unit

    async def counted(*args: Any, mode: str, **kwargs: Any) -> Any:
        admitted.append(mode)
        return await unit(*args, mode=mode, **kwargs)

    monkeypatch.setattr(engine, "_admit_unit", counted)
    return admitted


@pytest.fixture
def agent(alice):
    return AgentFactory(owner=alice, agent_id="greeter", preferred_platform="openai", model="gpt-4o-mini")


def fields_of(execution_id: Any) -> dict[str, Any]:
    row = AgentExecution.objects.get(pk=execution_id)
    return {name: getattr(row, name) for name in ROW_FIELDS}


async def test_a_run_is_admitted_on_the_loop_once_its_budgets_are_known_and_recorded_alike(
    fake_registry, fake_openai, agent, alice, units, monkeypatch
):
    for _ in range(3):
        fake_openai.reply(text="Hi", input_tokens=5, output_tokens=2)
    context = {"metadata": {"k": "v"}}

    first = await engine.execute_agent(agent, {"task": "hi"}, alice, context)  # reads the budgets: a unit
    on_loop = await engine.execute_agent(agent, {"task": "hi"}, alice, context, request_hash="h")
    with monkeypatch.context() as off:
        off.setattr(loop_admission, "plan", lambda *args, **kwargs: None)
        in_unit = await engine.execute_agent(agent, {"task": "hi"}, alice, context, request_hash="h")

    assert units == ["sync", "sync"]  # the first and the one with the loop turned off
    assert first.success and on_loop.success and in_unit.success
    loop_row = await sync_to_async(fields_of)(on_loop.execution_id)
    assert loop_row == await sync_to_async(fields_of)(in_unit.execution_id)
    assert (loop_row["status"], loop_row["request_hash"]) == (ExecutionStatus.COMPLETED, "h")


async def test_a_stream_is_admitted_on_the_loop(fake_registry, fake_openai, agent, alice, units):
    fake_openai.reply(text="warm")
    fake_openai.reply(text="streamed")
    await engine.execute_agent(agent, {"task": "hi"}, alice)
    events = [event async for event in engine.execute_streaming(agent, {"task": "hi"}, alice)]

    assert units == ["sync"]
    assert type(events[-1]).__name__ == "ExecutionCompleted"
    assert await AgentExecution.objects.filter(mode="stream", status=ExecutionStatus.COMPLETED).acount() == 1


async def test_a_key_a_conversation_or_a_background_run_is_admitted_in_a_unit(
    fake_registry, fake_openai, agent, alice, units
):
    for _ in range(3):
        fake_openai.reply(text="Hi")
    await engine.execute_agent(agent, {"task": "hi"}, alice)
    conversation = await sync_to_async(ConversationFactory)(owner=alice)

    await engine.execute_agent(agent, {"task": "hi"}, alice, idempotency_key="k-1", request_hash="h")
    await engine.execute_agent(agent, {"task": "hi"}, alice, {"conversation_id": str(conversation.pk)})
    await engine.create_pending(agent, {"task": "hi"}, alice)

    assert units == ["sync", "sync", "sync", "background"]


async def test_bad_input_on_the_loop_raises_as_in_a_unit_and_writes_nothing(
    fake_registry, fake_openai, agent, alice, units, monkeypatch
):
    fake_openai.reply(text="warm")
    await engine.execute_agent(agent, {"task": "hi"}, alice)

    with pytest.raises(ApplicationError) as on_loop:
        await engine.execute_agent(agent, {"no_task": 1}, alice)
    with monkeypatch.context() as off, pytest.raises(ApplicationError) as in_unit:
        off.setattr(loop_admission, "plan", lambda *args, **kwargs: None)
        await engine.execute_agent(agent, {"no_task": 1}, alice)
    with pytest.raises(ApplicationError) as no_agent:  # not an Agent: refused by prepare_run, in the unit
        await engine.execute_agent(None, {"task": "hi"}, alice)

    assert units == ["sync", "sync", "sync"]  # the warm-up, the loop turned off, no agent
    assert on_loop.value.status == 400
    assert (on_loop.value.code, on_loop.value.message, on_loop.value.fields) == (
        in_unit.value.code, in_unit.value.message, in_unit.value.fields,
    )  # fmt: skip
    assert (no_agent.value.status, no_agent.value.fields) == (400, {"agent": "required"})
    assert await AgentExecution.objects.acount() == 1


async def test_a_caller_cancelled_during_the_insert_leaves_the_row_cancelled(
    fake_registry, fake_openai, agent, alice, units, monkeypatch
):
    fake_openai.reply(text="warm")
    await engine.execute_agent(agent, {"task": "hi"}, alice)
    inserted = asyncio.Event()
    insert = loop_admission.ainsert_row

    async def slow_reply(execution, *args):  # type: ignore[no-untyped-def]
        await insert(execution, *args)
        inserted.set()
        await asyncio.sleep(1.0)

    monkeypatch.setattr(loop_admission, "ainsert_row", slow_reply)
    caller = asyncio.ensure_future(engine.execute_agent(agent, {"task": "hi"}, alice))
    await asyncio.wait_for(inserted.wait(), 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    async def cancelled() -> bool:
        return await AgentExecution.objects.filter(status=ExecutionStatus.CANCELLED).aexists()

    for _ in range(100):
        if await cancelled():
            break
        await asyncio.sleep(0.05)
    assert await cancelled()
    assert units == ["sync"]
    assert len(fake_openai.requests) == 1
