"""Per-platform cooldown, shared by every run of the process (a circuit breaker without the half-open dance).

A platform that failed `threshold` times in a row with a health failure (rate limited, 5xx, timeout, broken
connection) is skipped for `seconds` without any network call, so later runs fall back at once instead of
paying the retries again. One success resets its count. Errors that say nothing about the platform's health
(a bad request, a refusal, a wrong key) neither count nor reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apps.platforms.errors import PlatformError

# Kinds that mean "this platform is unwell right now" rather than "this request is wrong".
HEALTH_KINDS = frozenset(
    {"rate_limited", "server_error", "timeout", "connection", "incomplete_stream", "malformed_response"}
)


def counts_against_health(error: PlatformError) -> bool:
    return error.retryable or error.kind in HEALTH_KINDS


@dataclass(slots=True)
class _State:
    failures: int = 0
    until: float = 0.0


class Cooldowns:
    """Thread-safe: a process may run event loops in several threads (Celery, sync callers)."""

    def __init__(
        self, *, threshold: int = 3, seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = max(1, threshold)
        self.seconds = seconds
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def remaining(self, platform: str) -> float:
        """Seconds of cooldown left for `platform` (0.0 when it may be called)."""
        state = self._states.get(platform)  # a dict read is atomic; no lock on the hot path
        if state is None or not state.until:
            return 0.0
        left = state.until - self._clock()
        return left if left > 0 else 0.0

    def record_failure(self, platform: str, error: PlatformError | None = None) -> bool:
        """Count a failed attempt; True when this failure put the platform in cooldown.

        `error=None` is a failure without a PlatformError (the run's deadline cut the request).
        """
        if error is not None and not counts_against_health(error):
            return False
        with self._lock:
            state = self._states.setdefault(platform, _State())
            state.failures += 1
            if state.failures >= self.threshold and self.seconds > 0:
                state.until = self._clock() + self.seconds
                state.failures = 0
                return True
            return False

    def record_success(self, platform: str) -> None:
        if platform not in self._states:
            return
        with self._lock:
            self._states.pop(platform, None)

    def reset(self) -> None:
        with self._lock:
            self._states.clear()

    def snapshot(self) -> dict[str, float]:
        """Platforms currently cooling down and the seconds left (for health checks and logs)."""
        return {name: left for name in list(self._states) if (left := self.remaining(name)) > 0}
