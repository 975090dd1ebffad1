"""The small pure pieces: the built-in tools (a safe calculator, no eval), backoff arithmetic, cooldowns,
and the engine's independence from Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.retry import RetryPolicy, backoff_delay, fits_deadline
from apps.agents.engine.tools import ToolError, calculate, current_time, tool_registry
from tests.fakes.platform import platform_error

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("-3 ** 2", -9),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("1 / 4", 0.25),
        ("2 ** 10", 1024),
        ("--5", 5),
        ("1.5e3 + 1", 1501.0),
    ],
)
def test_calculator_evaluates_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "unsupported syntax"),
        ("x + 1", "unsupported syntax"),
        ("(1).__class__", "unsupported syntax"),
        ("[1, 2]", "unsupported syntax"),
        ("True + 1", "unsupported syntax"),
        ("'a' * 3", "unsupported syntax"),
        ("9 ** 9 ** 9", "exponent larger"),
        ("99 ** 999", "result too large"),
        ("1" * 201, "longer than"),
        ("1 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not an arithmetic expression"),
        ("1e308 * 10", "not a finite number"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression, message):
    with pytest.raises(ToolError, match=message):
        calculate(expression)


def test_current_time_accepts_iana_zones_and_refuses_unknown_ones():
    assert current_time()["timezone"] == "UTC"
    assert current_time("Asia/Tokyo")["iso"].endswith("+09:00")
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time("Mars/Olympus")


async def test_registry_validates_arguments_against_the_schema():
    outcome = await tool_registry.invoke("calculator", {"expression": 5}, allowed=["calculator"])
    assert outcome.is_error and "invalid arguments" in outcome.result
    outcome = await tool_registry.invoke(
        "current_time", {"timezone": "Nowhere/City"}, allowed=["current_time"]
    )
    assert outcome.is_error and "unknown time zone" in outcome.result


def test_backoff_is_full_jitter_growing_exponentially_up_to_the_cap():
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    assert [backoff_delay(n, policy=policy, rng=lambda: 1.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(2, policy=policy, rng=lambda: 0.0) == 0.0
    assert backoff_delay(0, policy=policy, rng=lambda: 0.5, retry_after=2.5) == 2.5
    assert backoff_delay(0, policy=policy, rng=lambda: 0.5, retry_after=60) == 5.0
    assert fits_deadline(1.0, None) and fits_deadline(1.0, 1.5) and not fits_deadline(2.0, 1.5)


def test_cooldown_starts_after_consecutive_health_failures_and_ends():
    now = [100.0]
    cooldowns = Cooldowns(threshold=2, seconds=30, clock=lambda: now[0])
    assert cooldowns.record_failure("openai", platform_error("server_error")) is False
    assert cooldowns.record_failure("openai", platform_error("rate_limited")) is True
    assert cooldowns.remaining("openai") == 30
    now[0] += 31
    assert cooldowns.remaining("openai") == 0


def test_cooldown_ignores_request_errors_and_resets_on_success():
    cooldowns = Cooldowns(threshold=2, seconds=30)
    cooldowns.record_failure("openai", platform_error("server_error"))
    cooldowns.record_success("openai")
    cooldowns.record_failure("openai", platform_error("server_error"))
    assert cooldowns.remaining("openai") == 0  # the success broke the streak
    for kind in ("bad_request", "auth", "refusal", "not_found"):
        cooldowns.record_failure("anthropic", platform_error(kind))
        cooldowns.record_failure("anthropic", platform_error(kind))
    assert cooldowns.remaining("anthropic") == 0


def test_the_engine_imports_nothing_from_django():
    code = (
        "import sys\n"
        "import apps.agents.engine.base_agent, apps.agents.engine.task_agent\n"
        "import apps.agents.engine.conversational_agent, apps.agents.engine.tools\n"
        "import apps.agents.engine.serialize\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
