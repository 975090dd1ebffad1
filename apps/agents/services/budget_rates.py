"""Worst-case prices for reservations: USD per token of a (platform, model) at its most expensive tier."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from apps.agents.models_budget import usd_to_units
from apps.platforms.base import Usage

Cost = Callable[[str, str, Usage], Decimal]

#: Seconds a worst-case rate is reused: prices change by date (genai-prices), not by the minute.
RATE_TTL_SECONDS = 3600.0
_PER_MILLION = 1_000_000


class WorstCaseRates:
    """USD per token of a (platform, model) at its most expensive tier, for reservations.

    Pricing a usage through genai-prices costs a third of a millisecond; per attempt that would be most of the
    spend control's overhead. A reservation only needs an upper bound, and a linear one is exact for flat
    prices. Tiered prices (a higher rate above a context size) only rise with size, so the rate measured at a
    million input tokens (and, for output, with a million input tokens beside it) is at least the rate at any
    smaller size: the bound holds for every attempt."""

    def __init__(self, cost: Cost) -> None:
        self.cost = cost
        self._rates: dict[tuple[str, str], tuple[Decimal, Decimal, float]] = {}

    def units(self, platform: str, model: str, usage: Usage) -> int:
        key = (platform, model)
        rates = self._rates.get(key)
        if rates is None or rates[2] < time.monotonic():
            million = _PER_MILLION
            inputs = self.cost(platform, model, Usage(million, 0))
            both = self.cost(platform, model, Usage(million, million))
            rates = (
                inputs / million,
                max(Decimal(0), both - inputs) / million,
                time.monotonic() + RATE_TTL_SECONDS,
            )
            self._rates[key] = rates
        return usd_to_units(usage.input_tokens * rates[0] + usage.output_tokens * rates[1])


#: One WorstCaseRates per platform registry (tests install registries with other prices).
_rates_by_registry: weakref.WeakKeyDictionary[Any, WorstCaseRates] = weakref.WeakKeyDictionary()


def rates_for(registry: Any) -> WorstCaseRates:
    rates = _rates_by_registry.get(registry)
    if rates is None:
        rates = _rates_by_registry[registry] = WorstCaseRates(registry.cost)
    return rates
