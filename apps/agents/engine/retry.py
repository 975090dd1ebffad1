"""Backoff arithmetic for the retry loop: exponential with full jitter, honouring a provider's Retry-After.

Pure functions over a `RetryPolicy`, so the numbers can be tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Ceiling of the first retry's delay in seconds; doubles with every further retry.
    base_delay: float = 0.5
    #: No single wait is longer than this, whatever the provider asks for in Retry-After.
    max_delay: float = 20.0
    multiplier: float = 2.0


def backoff_delay(
    retry_number: int,
    *,
    policy: RetryPolicy,
    rng: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry `retry_number` (0 for the first retry).

    Without Retry-After: "full jitter", a uniform draw in [0, min(max_delay, base * multiplier**n)]. Full
    jitter spreads a crowd of clients that failed together (a provider's 429 wave) instead of having them
    come back in lockstep. With Retry-After the provider said when it will take us again: wait exactly that,
    capped by max_delay so that one confused header cannot park a run for an hour.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, policy.max_delay)
    ceiling = min(policy.max_delay, policy.base_delay * policy.multiplier**retry_number)
    return max(0.0, rng() * ceiling)


def fits_deadline(delay: float, remaining: float | None) -> bool:
    """Whether sleeping `delay` still leaves time for another request before the run's deadline.

    Waiting until (or past) the deadline only to time out would waste the time a fallback platform could
    use, so a retry that does not fit gives up on this platform instead.
    """
    return remaining is None or delay < remaining
