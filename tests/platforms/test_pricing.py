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


# ------------------------------------------------------------------ the two-rate path (pricing._GenaiPrice)
USAGES = [(0, 0), (1, 1), (1234, 567), (199_999, 10), (200_001, 4_000), (1_500_000, 80_000)]


def _genai_total(provider, model, input_tokens: int, output_tokens: int) -> Decimal:
    import genai_prices

    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return Decimal(model.calc_price(usage, provider).total_price).quantize(Decimal("1e-10"))


def test_every_published_price_costs_what_genai_prices_computes() -> None:
    # The fast two-rate formula is taken per price only where it agrees with genai-prices' own computation;
    # over every model of every provider in the snapshot, tiered prices included, the answer must not move.
    from genai_prices import data_snapshot

    from apps.platforms.pricing import COST_QUANTUM, _GenaiPrice

    checked = fast = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            price = _GenaiPrice(provider, model)
            for input_tokens, output_tokens in USAGES:
                expected = _genai_total(provider, model, input_tokens, output_tokens)
                cost = price.cost(Usage(input_tokens, output_tokens)).quantize(COST_QUANTUM)
                assert cost == expected, (provider.id, model.id, input_tokens, output_tokens)
                checked += 1
            fast += all(price._two_rates.values())
    assert checked > 5000
    assert fast > 1000  # the formula is what most models take, not a path nobody reaches


def test_a_price_the_two_rates_cannot_express_goes_through_genai_prices() -> None:
    # A per-request fee (requests_kcount) is billed on every call whatever the tokens: the formula would miss
    # it, so the probe finds the disagreement and the full computation is used for that price.
    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    from apps.platforms.pricing import _GenaiPrice

    provider, model = data_snapshot.get_snapshot().find_provider_model("gpt-4o-mini", None, "openai", None)
    fee = ModelPrice(input_mtok=Decimal("0.15"), output_mtok=Decimal("0.6"), requests_kcount=Decimal("5"))
    price = _GenaiPrice(provider, type(model)(**{**model.__dict__, "prices": fee}))

    cost = price.cost(USAGE)

    assert list(price._two_rates.values()) == [False]
    assert cost == (1234 * Decimal("0.15") + 567 * Decimal("0.6")) / 1_000_000 + Decimal("5") / 1000
