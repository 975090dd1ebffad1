"""What a call cost, in USD, as a Decimal.

Prices come from the `genai-prices` package's bundled snapshot (no network), unless `MODEL_PRICES` in settings
overrides them. Local models are free. A model nobody knows costs 0, with one warning per (provider, model)
so the gap is visible in the logs without flooding them. Pure Python: the registry passes settings in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from apps.platforms.base import Usage

logger = logging.getLogger(__name__)

#: Costs are stored with 10 decimal places (AgentExecution.cost); a 1-token call on a cheap model is ~1e-8.
COST_QUANTUM = Decimal("0.0000000001")
PER_MILLION = Decimal(1_000_000)
ZERO = Decimal("0").quantize(COST_QUANTUM)
FREE_PROVIDERS = frozenset({"local"})
# Our platform names -> genai-prices provider ids (it knows Gemini as "google").
GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}

OverrideSpec = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class TokenRates:
    """USD per million tokens."""

    input: Decimal
    output: Decimal

    def cost(self, usage: Usage) -> Decimal:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output) / PER_MILLION


class _GenaiPrice:
    """A model found in genai-prices. The lookup is cached; the price itself is computed per call because
    it can depend on the usage (tiered prices above a context size) and on the date (price changes).

    Why not always `calc_price`: genai-prices decomposes every usage into its billed units through its unit
    registry (about 0.2 ms of CPU per call, the largest cost of a run after the SDK). Our usage has two counts,
    input and output tokens, and for nearly every model the decomposition then bills exactly those two at the
    model's input and output rates. So the first time a price version is seen it is checked against
    genai-prices' own `calc_price` on probe usages; when they agree, later calls apply the two rates with
    genai-prices' `calc_unit_price` (which also picks the tier); when they do not (a per-request fee, say),
    every call goes through `calc_price`.
    """

    #: Probe usages: each count alone and both, large enough to cross the usual tier thresholds.
    PROBES = ((1_000_003, 0), (0, 2_000_003), (300_007, 70_001), (1_009, 2_003))

    def __init__(self, provider: Any, model: Any) -> None:
        self._provider = provider
        self._model = model
        self._two_rates: dict[int, bool] = {}  # id(ModelPrice) -> whether the two-rate formula holds

    def cost(self, usage: Usage) -> Decimal:
        now = datetime.now(tz=UTC)
        model_price = self._model.get_prices(now)
        holds = self._two_rates.get(id(model_price))
        if holds is None:
            holds = self._two_rates[id(model_price)] = self._check(model_price, now)
        if holds:
            return _two_rate_cost(model_price, usage.input_tokens, usage.output_tokens)
        return self._full_cost(usage.input_tokens, usage.output_tokens, now)

    def _full_cost(self, input_tokens: int, output_tokens: int, now: datetime) -> Decimal:
        import genai_prices

        calc = self._model.calc_price(
            genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            self._provider,
            genai_request_timestamp=now,
        )
        return Decimal(calc.total_price)

    def _check(self, model_price: Any, now: datetime) -> bool:
        try:
            return all(
                _two_rate_cost(model_price, i, o) == self._full_cost(i, o, now) for i, o in self.PROBES
            )
        except Exception:  # a price shape the formula cannot read: the full computation it is
            return False


def _two_rate_cost(model_price: Any, input_tokens: int, output_tokens: int) -> Decimal:
    from genai_prices.types import calc_unit_price

    return calc_unit_price(
        getattr(model_price, "input_mtok", None), input_tokens, input_tokens, 1_000_000
    ) + calc_unit_price(getattr(model_price, "output_mtok", None), output_tokens, input_tokens, 1_000_000)


class _Free:
    def cost(self, usage: Usage) -> Decimal:
        return Decimal(0)


_FREE = _Free()


def parse_overrides(overrides: OverrideSpec | None) -> dict[tuple[str, str], TokenRates]:
    """`{"provider:model": {"input": "0.15", "output": "0.60"}}` (USD per million tokens) -> TokenRates.
    A malformed entry raises ValueError naming it, so a bad MODEL_PRICES fails at startup, not per call."""
    parsed: dict[tuple[str, str], TokenRates] = {}
    for key, rates in (overrides or {}).items():
        provider, sep, model = str(key).partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"MODEL_PRICES key {key!r} must look like 'provider:model'")
        try:
            parsed[(provider, model)] = TokenRates(
                input=Decimal(str(rates.get("input", "0"))), output=Decimal(str(rates.get("output", "0")))
            )
        except (InvalidOperation, AttributeError, TypeError) as exc:
            raise ValueError(
                f"MODEL_PRICES[{key!r}] needs decimal 'input' and 'output' (USD per million tokens)"
            ) from exc
    return parsed


class Pricing:
    """Callable `(provider, model, usage) -> Decimal`, the registry's price function."""

    def __init__(self, overrides: OverrideSpec | None = None) -> None:
        self._overrides = parse_overrides(overrides)
        self._cache: dict[tuple[str, str], TokenRates | _GenaiPrice | _Free] = {}
        self._lock = threading.Lock()

    def __call__(self, provider: str, model: str, usage: Usage) -> Decimal:
        return self.cost(provider, model, usage)

    def cost(self, provider: str, model: str, usage: Usage) -> Decimal:
        price = self._cache.get((provider, model))
        if price is None:
            price = self._resolve(provider, model)
        return price.cost(usage).quantize(COST_QUANTUM)

    def _resolve(self, provider: str, model: str) -> TokenRates | _GenaiPrice | _Free:
        # Under a lock so that concurrent first calls log the unknown-model warning exactly once.
        with self._lock:
            key = (provider, model)
            if key in self._cache:
                return self._cache[key]
            price = self._lookup(provider, model)
            self._cache[key] = price
            return price

    def _lookup(self, provider: str, model: str) -> TokenRates | _GenaiPrice | _Free:
        override = self._overrides.get((provider, model))
        if override is not None:
            return override
        if provider in FREE_PROVIDERS:
            return _FREE
        from genai_prices import data_snapshot

        try:
            found_provider, found_model = data_snapshot.get_snapshot().find_provider_model(
                model, None, GENAI_PROVIDER_IDS.get(provider, provider), None
            )
        except LookupError:
            logger.warning(
                "no price known for %s:%s; counting its cost as 0 (set MODEL_PRICES to price it)",
                provider,
                model,
                extra={"provider": provider, "model": model},
            )
            return _FREE
        return _GenaiPrice(found_provider, found_model)


_default = Pricing()


def cost_for(provider: str, model: str, usage: Usage) -> Decimal:
    """Cost from genai-prices alone (no overrides). The registry uses `Pricing(settings.MODEL_PRICES)`."""
    return _default.cost(provider, model, usage)
