"""TaskAgent under the schema policy: validation off the event loop, within its time budget; a refused
schema never reaches a platform, whoever built the agent."""

from __future__ import annotations

import threading
import time

from apps.agents.engine import schema_policy
from apps.agents.engine.schema_policy import SchemaLimits

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}


async def test_validation_runs_in_a_worker_thread(fake_platforms, make_agent, monkeypatch):
    threads: list[threading.Thread] = []
    real = schema_policy.first_error

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(schema_policy, "first_error", spy)
    fake_platforms.openai.reply('{"a": "x"}')

    result = await make_agent(output_schema=SCHEMA).execute({"task": "t"})

    assert result.success, result.error
    assert threads and threads[0] is not threading.main_thread()


async def test_a_validation_past_its_budget_fails_the_run(fake_platforms, make_agent):
    # Two branches per level: exponential in the depth of the answer, which a model can be talked into.
    branching = {
        "anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "array", "items": {"$ref": "#"}}]
    }
    fake_platforms.openai.reply("[" * 40 + "1" + "]" * 40)
    agent = make_agent(output_schema=branching, schema_limits=SchemaLimits(validation_seconds=0.1))

    started = time.monotonic()
    result = await agent.execute({"task": "t"})

    assert not result.success
    assert result.error.code == "invalid_output"
    assert "took longer than 0.1 s" in result.error.message
    assert time.monotonic() - started < 5


async def test_a_refused_schema_never_reaches_a_platform(fake_platforms, make_agent):
    agent = make_agent(output_schema={"$ref": "http://127.0.0.1:9/x"})

    result = await agent.execute({"task": "t"})

    assert result.error.code == "invalid_output"
    assert "the output schema is refused" in result.error.message
    assert fake_platforms.openai.requests == []
