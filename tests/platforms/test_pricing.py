"""Cost in Decimal: genai-prices' bundled prices, settings overrides, free local models, unknown models."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from apps.platforms.base import Usage
from apps.platforms.pricing import Pricing, cost_for, parse_overrides

USAGE = Usage(input_tokens=1234, output_tokens=567)


def test_known_model_costs_what_its_published_price_says() -> None:
    # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
    expected = (1234 * Decimal("0.15") + 567 * Decimal("0.60")) / 1_000_000

    cost = Pricing()("openai", "gpt-4o-mini", USAGE)

    assert cost == expected.quantize(Decimal("1e-10")) == Decimal("0.0005253000")
    assert isinstance(cost, Decimal)
    assert cost.as_tuple().exponent == -10


def test_gemini_platform_is_priced_as_googles_models() -> None:
    # gemini-2.0-flash: $0.10 in, $0.40 out per million tokens.
    expected = (1234 * Decimal("0.10") + 567 * Decimal("0.40")) / 1_000_000

    assert cost_for("gemini", "gemini-2.0-flash", USAGE) == expected.quantize(Decimal("1e-10"))


def test_anthropic_model_alias_is_priced() -> None:
    # claude-3-5-haiku: $0.80 in, $4 out per million tokens.
    expected = (1234 * Decimal("0.80") + 567 * Decimal("4")) / 1_000_000

    assert cost_for("anthropic", "claude-3-5-haiku-latest", USAGE) == expected.quantize(Decimal("1e-10"))


def test_override_wins_over_the_published_price() -> None:
    pricing = Pricing({"openai:gpt-4o-mini": {"input": "1", "output": "2.5"}})
    expected = (1234 * Decimal(1) + 567 * Decimal("2.5")) / 1_000_000

    assert pricing("openai", "gpt-4o-mini", USAGE) == expected.quantize(Decimal("1e-10"))
    # Other models are untouched by the override.
    assert pricing("openai", "gpt-4o", USAGE) == cost_for("openai", "gpt-4o", USAGE) > 0


def test_override_prices_a_model_genai_prices_does_not_know(caplog: pytest.LogCaptureFixture) -> None:
    pricing = Pricing({"openai:llama3.2": {"input": 0.2, "output": 0.2}})

    with caplog.at_level(logging.WARNING, logger="apps.platforms.pricing"):
        cost = pricing("openai", "llama3.2", Usage(1_000_000, 1_000_000))

    assert cost == Decimal("0.4")
    assert caplog.records == []


def test_local_models_are_free_whatever_their_name() -> None:
    assert Pricing()("local", "gpt-4o-mini", USAGE) == Decimal(0)
    assert cost_for("local", "smollm2-135m-instruct", USAGE) == Decimal(0)


def test_unknown_model_costs_zero_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pricing = Pricing()

    with caplog.at_level(logging.WARNING, logger="apps.platforms.pricing"):
        costs = [pricing("openai", "my-finetune-xyz", USAGE) for _ in range(3)]
        other = pricing("anthropic", "my-finetune-xyz", USAGE)

    assert costs == [Decimal(0)] * 3 and other == Decimal(0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one per (provider, model), not one per call
    assert "openai:my-finetune-xyz" in messages[0] and "MODEL_PRICES" in messages[0]
    assert "anthropic:my-finetune-xyz" in messages[1]


def test_zero_usage_costs_zero() -> None:
    assert Pricing()("openai", "gpt-4o-mini", Usage()) == Decimal(0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"gpt-4o-mini": {"input": "1", "output": "1"}},  # no provider
        {"openai:gpt-4o-mini": {"input": "cheap", "output": "1"}},  # not a number
        {"openai:gpt-4o-mini": "1"},  # not a mapping
    ],
)
def test_malformed_overrides_fail_loudly_naming_the_entry(overrides: dict) -> None:
    with pytest.raises(ValueError, match="MODEL_PRICES"):
        parse_overrides(overrides)
