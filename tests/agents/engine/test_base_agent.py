"""BaseAgent decisions over FakePlatforms: retries, Retry-After, fallback, cooldown, deadline, streaming,
cancellation, hooks. No HTTP and no database: tests/agents/services/ covers those through the real SDKs."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from apps.agents.engine import AgentConfig, AgentContext, Cooldowns, HookVeto, RunState, TaskAgent
from apps.agents.engine.events import (
    ExecutionCompleted,
    ExecutionFailed,
    OutputDelta,
    PlatformFallback,
)
from apps.agents.engine.retry import RetryPolicy
from apps.platforms.base import Usage
from apps.platforms.registry import PlatformRegistry
from tests.agents.engine.conftest import collect
from tests.fakes.platform import FakePlatform, fake_cost, platform_error

TASK = {"task": "Say hello"}


async def test_success_records_usage_cost_platform_and_one_attempt(fake_platforms, make_agent):
    fake_platforms.openai.reply("Hello there", usage=Usage(12, 3))
    agent = make_agent(model="gpt-4o", system_prompt="Be brief.")

    result = await agent.execute(TASK)

    assert result.success is True
    assert result.output == "Hello there"
    assert (result.input_tokens, result.output_tokens, result.tokens_used) == (12, 3, 15)
    assert result.cost == fake_cost("openai", "gpt-4o", Usage(12, 3))
    assert (result.platform_used, result.model_used) == ("openai", "gpt-4o")
    assert [(a.platform, a.model, a.status) for a in result.attempts] == [("openai", "gpt-4o", "ok")]
    request = fake_platforms.openai.requests[0]
    assert request.model == "gpt-4o"
    assert request.system_prompt == "Be brief."
    assert request.messages[0].content == "Say hello"
    assert request.temperature == 0.3  # TaskAgent's default


async def test_retryable_error_is_retried_with_jittered_backoff_then_succeeds(
    fake_platforms, make_agent, sleeps
):
    fake_platforms.openai.fail("server_error", times=2).reply("finally")
    agent = make_agent(max_retries=2)

    result = await agent.execute(TASK)

    assert result.success and result.output == "finally"
    assert [a.status for a in result.attempts] == ["server_error", "server_error", "ok"]
    assert result.attempts[0].http_status == 503
    # Full jitter with rng=0.5: half of base*2**n (base 0.5 s).
    assert sleeps.delays == [0.25, 0.5]
    assert fake_platforms.anthropic.requests == []


async def test_retry_after_is_honoured_exactly(fake_platforms, make_agent, sleeps):
    fake_platforms.openai.fail("rate_limited", retry_after=3.0).reply("ok")
    result = await make_agent().execute(TASK)
    assert result.success
    assert sleeps.delays == [3.0]


async def test_retry_after_is_capped_by_max_delay(fake_platforms, make_agent, sleeps):
    fake_platforms.openai.fail("rate_limited", retry_after=600).reply("ok")
    agent = make_agent()
    agent.retry_policy = RetryPolicy(base_delay=0.5, max_delay=7.0)
    assert (await agent.execute(TASK)).success
    assert sleeps.delays == [7.0]


async def test_retry_after_beyond_the_deadline_falls_back_instead_of_waiting(
    fake_platforms, make_agent, sleeps
):
    fake_platforms.openai.fail("rate_limited", retry_after=15)
    fake_platforms.anthropic.reply("from anthropic")
    result = await make_agent(timeout_seconds=10).execute(TASK)
    assert result.success and result.platform_used == "anthropic"
    assert sleeps.delays == []
    assert len(fake_platforms.openai.requests) == 1


async def test_bad_request_fails_at_once_without_retry_or_fallback(fake_platforms, make_agent, sleeps):
    fake_platforms.openai.fail("bad_request", message="max_tokens is too large")
    result = await make_agent().execute(TASK)
    assert result.success is False
    assert result.error.code == "provider_error"
    assert "max_tokens is too large" in result.error.message
    assert len(fake_platforms.openai.requests) == 1
    assert fake_platforms.anthropic.requests == [] and fake_platforms.gemini.requests == []
    assert [a.status for a in result.attempts] == ["bad_request"]
    assert sleeps.delays == []


@pytest.mark.parametrize("kind", ["auth", "not_found", "refusal", "unavailable"])
async def test_non_retryable_errors_fall_back_without_retrying(fake_platforms, make_agent, sleeps, kind):
    fake_platforms.openai.fail(kind)
    result = await make_agent(max_retries=3).execute(TASK)
    assert result.success and result.platform_used == "anthropic"
    assert len(fake_platforms.openai.requests) == 1
    assert sleeps.delays == []


async def test_fallback_through_the_chain_uses_each_platforms_default_model(fake_platforms, make_agent):
    fake_platforms.openai.fail("server_error", times=3)
    fake_platforms.anthropic.fail("connection", times=3)
    fake_platforms.gemini.reply("from gemini", usage=Usage(4, 2))
    agent = make_agent(model="gpt-4o", max_retries=2)

    events = await collect(agent, TASK)
    result = events[-1].result

    assert result.success and result.output == "from gemini"
    assert [(a.platform, a.model, a.status) for a in result.attempts] == [
        *[("openai", "gpt-4o", "server_error")] * 3,
        *[("anthropic", "claude-3-5-haiku-latest", "connection")] * 3,
        ("gemini", "gemini-2.0-flash", "ok"),
    ]
    assert fake_platforms.anthropic.requests[0].model == "claude-3-5-haiku-latest"
    fallbacks = [e for e in events if isinstance(e, PlatformFallback)]
    assert [(f.from_platform, f.to_platform, f.reason) for f in fallbacks] == [
        ("openai", "anthropic", "server_error 503"),
        ("anthropic", "gemini", "connection"),
    ]
    assert (result.platform_used, result.model_used) == ("gemini", "gemini-2.0-flash")
    assert result.cost == fake_cost("gemini", "gemini-2.0-flash", Usage(4, 2))


async def test_all_platforms_failing_gives_provider_error_with_the_last_message(fake_platforms, make_agent):
    fake_platforms.openai.fail("auth")
    fake_platforms.anthropic.fail("not_found")
    fake_platforms.gemini.fail("refusal", message="blocked by safety settings")
    result = await make_agent().execute(TASK)
    assert result.error.code == "provider_error"
    assert "blocked by safety settings" in result.error.message
    assert len(result.attempts) == 3


async def test_no_configured_platform_gives_no_platform():
    agent = TaskAgent(AgentConfig(agent_id="a", name="A"), PlatformRegistry({}))
    result = await agent.execute(TASK)
    assert result.success is False and result.error.code == "no_platform"


async def test_unconfigured_preferred_platform_is_recorded_and_skipped(fake_platforms, make_agent):
    fake_platforms.openai.reply("ok")
    result = await make_agent(preferred_platform="local", model="smollm2").execute(TASK)
    assert result.success and result.platform_used == "openai"
    assert [(a.platform, a.status) for a in result.attempts] == [("local", "unavailable"), ("openai", "ok")]
    # The agent's model belongs to its preferred platform; OpenAI gets its own default.
    assert fake_platforms.openai.requests[0].model == "gpt-4o-mini"


async def test_cooldown_skips_a_failing_platform_without_a_request(fake_platforms, make_agent, sleeps):
    cooldowns = Cooldowns(threshold=3, seconds=60)
    fake_platforms.openai.fail("server_error", times=3)
    first = await make_agent(cooldowns=cooldowns, max_retries=2).execute(TASK)
    assert first.platform_used == "anthropic"
    assert cooldowns.remaining("openai") > 0
    requests_before = len(fake_platforms.openai.requests)
    delays_before = len(sleeps.delays)

    events = await collect(make_agent(cooldowns=cooldowns, max_retries=2), TASK)

    second = events[-1].result
    assert second.success and second.platform_used == "anthropic"
    assert len(fake_platforms.openai.requests) == requests_before  # nothing reached it
    assert len(sleeps.delays) == delays_before  # and no time was spent retrying it
    assert [(a.platform, a.status) for a in second.attempts] == [("openai", "cooldown"), ("anthropic", "ok")]
    assert [
        (e.from_platform, e.to_platform, e.reason) for e in events if isinstance(e, PlatformFallback)
    ] == [("openai", "anthropic", "cooldown")]


async def test_every_platform_cooling_down_gives_no_platform(fake_platforms, make_agent):
    cooldowns = Cooldowns(threshold=1, seconds=60)
    for platform in fake_platforms:
        cooldowns.record_failure(platform.name, platform_error("server_error"))
    result = await make_agent(cooldowns=cooldowns).execute(TASK)
    assert result.error.code == "no_platform"
    assert all(p.requests == [] for p in fake_platforms)


async def test_streaming_yields_deltas_then_completed_with_exact_usage(fake_platforms, make_agent):
    fake_platforms.openai.reply("Hello streaming world", usage=Usage(21, 3))
    events = await collect(make_agent(), TASK)
    deltas = [e.text for e in events if isinstance(e, OutputDelta)]
    assert deltas == ["Hello ", "streaming ", "world"]
    assert isinstance(events[-1], ExecutionCompleted)
    result = events[-1].result
    assert result.output == "Hello streaming world"
    assert (result.input_tokens, result.output_tokens) == (21, 3)
    assert result.cost == fake_cost("openai", "gpt-4o-mini", Usage(21, 3))
    assert fake_platforms.openai.streams_closed == 1


async def test_stream_cut_after_output_fails_without_retry_or_fallback(fake_platforms, make_agent, sleeps):
    fake_platforms.openai.reply("Hello there world", fail_after=1, error=platform_error("connection"))
    events = await collect(make_agent(max_retries=2), TASK)
    assert [type(e) for e in events] == [OutputDelta, ExecutionFailed]
    failed = events[-1]
    assert failed.error.code == "provider_error"
    assert "after output was sent" in failed.error.message
    assert failed.result.output == "Hello "  # the partial output is kept
    assert len(fake_platforms.openai.requests) == 1
    assert fake_platforms.anthropic.requests == []
    assert sleeps.delays == []


async def test_stream_failing_before_the_first_token_falls_back(fake_platforms, make_agent):
    fake_platforms.openai.reply("never sent", fail_after=0, error=platform_error("server_error"))
    fake_platforms.anthropic.reply("from anthropic")
    events = await collect(make_agent(max_retries=0), TASK)
    assert isinstance(events[0], PlatformFallback)
    assert "".join(e.text for e in events if isinstance(e, OutputDelta)) == "from anthropic"
    assert events[-1].result.platform_used == "anthropic"


async def test_deadline_covers_the_whole_run_and_gives_timeout(fake_platforms, make_agent):
    fake_platforms.openai.reply("never", hang=True)
    result = await make_agent(timeout_seconds=0.2).execute(TASK)
    assert result.success is False and result.error.code == "timeout"
    assert [a.status for a in result.attempts] == ["timeout"]
    assert fake_platforms.openai.cancelled == 1


async def test_an_attempt_cut_by_the_deadline_records_and_charges_the_usage_reported_so_far(
    fake_platforms, make_agent
):
    fake_platforms.openai.reply("never", hang=True, usage_so_far=Usage(700, 40))
    result = await make_agent(timeout_seconds=0.2).execute(TASK)

    assert result.error.code == "timeout"
    (attempt,) = result.attempts
    assert (attempt.status, attempt.input_tokens, attempt.output_tokens) == ("timeout", 700, 40)
    assert (result.input_tokens, result.output_tokens) == (700, 40)
    assert result.cost == fake_cost("openai", "", Usage(700, 40)) > 0


async def test_each_attempt_gets_the_time_left_of_the_run(fake_platforms, make_agent):
    fake_platforms.openai.fail("server_error").reply("ok")
    await make_agent(timeout_seconds=30).execute(TASK)

    first, second = (r.timeout for r in fake_platforms.openai.requests)
    assert first is not None and second is not None and 0 < second <= first <= 30


async def test_deadline_while_streaming_keeps_partial_output(fake_platforms, make_agent):
    fake_platforms.openai.reply("one two three four", chunk_delay=0.15)
    events = await collect(make_agent(timeout_seconds=0.2), TASK)
    failed = events[-1]
    assert isinstance(failed, ExecutionFailed) and failed.error.code == "timeout"
    assert failed.result.output.startswith("one ")
    assert fake_platforms.openai.streams_closed == 1


async def test_cancelling_the_task_propagates_and_keeps_progress(fake_platforms, make_agent):
    fake_platforms.openai.reply("never", hang=True)
    agent = make_agent()
    run = RunState()
    task = asyncio.create_task(agent.execute(TASK, run=run))
    await fake_platforms.openai.request_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake_platforms.openai.cancelled == 1
    assert [a.status for a in run.attempts] == ["cancelled"]
    assert run.partial_result("cancelled_by_user", "cancelled").error.code == "cancelled_by_user"


async def test_closing_the_stream_early_closes_the_platform_stream(fake_platforms, make_agent):
    fake_platforms.openai.reply("a b c d e f", chunk_delay=0.05)
    agent = make_agent()
    run = RunState()
    stream = agent.execute_streaming(TASK, run=run)
    first = await anext(stream)
    assert isinstance(first, OutputDelta)
    await stream.aclose()
    assert fake_platforms.openai.streams_closed == 1
    assert fake_platforms.openai.cancelled == 1
    assert run.partial_output() == "a "


async def test_pre_hook_can_change_the_input(fake_platforms, make_agent):
    agent = make_agent()

    async def shout(input_data, context):
        return {**input_data, "task": input_data["task"].upper()}

    agent.add_pre_hook(shout)
    assert (await agent.execute(TASK)).success
    assert fake_platforms.openai.requests[0].messages[0].content == "SAY HELLO"


async def test_pre_hook_veto_fails_the_run_before_any_request(fake_platforms, make_agent):
    agent = make_agent()

    def quota(input_data, context):
        raise HookVeto("monthly quota reached")

    agent.add_pre_hook(quota)
    result = await agent.execute(TASK)
    assert (result.success, result.error.code, result.error.message) == (
        False,
        "limit_exceeded",
        "monthly quota reached",
    )
    assert fake_platforms.openai.requests == []


async def test_post_hook_can_post_process_the_result(fake_platforms, make_agent):
    fake_platforms.openai.reply("secret: 1234")
    agent = make_agent()

    async def redact(result, input_data, context):
        result.output = result.output.replace("1234", "****")
        return result

    agent.add_post_hook(redact)
    assert (await agent.execute(TASK)).output == "secret: ****"


async def test_an_adapter_bug_is_recorded_and_falls_back(fake_platforms, make_agent):
    class Broken(FakePlatform):
        async def generate(self, request):
            raise KeyError("choices")

    registry = PlatformRegistry(
        {"openai": Broken("openai"), "anthropic": fake_platforms.anthropic},
        fallback_order=("openai", "anthropic"),
    )
    agent = TaskAgent(AgentConfig(agent_id="a", name="A"), registry, sleep=lambda s: asyncio.sleep(0))
    result = await agent.execute(TASK)
    assert result.success and result.platform_used == "anthropic"
    # Raw exception text stays in the log; the record (which the user sees) gets a stable message.
    assert result.attempts[0].status == "server_error"
    assert (
        result.attempts[0].error
        == "the platform failed with an internal error (details are in the server log)"
    )


async def test_prompt_includes_extra_input_fields(fake_platforms, make_agent):
    await make_agent().execute({"task": "Review this", "language": "python", "output_format": "markdown"})
    content = fake_platforms.openai.requests[0].messages[0].content
    assert content.startswith("Review this")
    assert "language: python" in content
    assert "Output format: markdown" in content


async def test_context_is_optional_and_execution_id_does_not_change_the_request(fake_platforms, make_agent):
    result = await make_agent().execute(TASK, AgentContext(execution_id="e-1"))
    assert result.success and result.cost == Decimal("0.00002")
