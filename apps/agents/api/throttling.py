"""Per-user rate limits: REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] scopes "user" (every request), "execute"
(runs, on top of "user") and "anon" (unauthenticated endpoints, per client address).

A fixed-window counter in the "throttle" cache (Redis when REDIS_URL is set, so every server process counts
against the same limit: INCR + EXPIRE in one round trip; the process's memory otherwise: `cache.add` +
`cache.incr`), atomic in Redis and in the local-memory cache, instead of
DRF's sliding window: DRF keeps and re-pickles a list of every request time in the window, which at the
default 6000/min is a 6000-element list read and written on every request. The price is that a client can
burst up to twice its rate across a window boundary. Rates are read on every request, so a settings
override (tests, or a reload) applies at once; DRF's own throttles freeze them at import time.
"""

from __future__ import annotations

import time

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.locmem import LocMemCache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from apps.security.client_address import client_ip

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    number, period = rate.split("/")
    return int(number), PERIODS[period.strip()[0]]


class WindowRateThrottle(BaseThrottle):
    """Counts a request against the rate of each of its `scopes`, in one call to the cache (one Redis round
    trip); refused when any of them is over its rate."""

    scopes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._wait: float | None = None

    def ident(self, request: Request) -> str:
        user = request.user
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"addr:{self.get_ident(request)}"

    def get_ident(self, request: Request) -> str:
        # DRF's own reads X-Forwarded-For from anyone, so a client picks a fresh budget per request by
        # sending a new header; the real address believes the header only from TRUSTED_PROXIES.
        return client_ip(request._request)

    def allow_request(self, request: Request, view: APIView) -> bool:
        now = time.time()
        windows = self._windows(request, now)
        if not windows:
            return True
        counts = _count(caches["throttle"], {key: period + 1 for key, _, period, _ in windows})
        return self._allowed(windows, counts, now)

    async def aallow_request(self, request: Request) -> bool:
        """allow_request from the event loop, where counts_on_loop() (the run admission on the loop:
        apps/agents/services/loop_admission.py)."""
        now = time.time()
        windows = self._windows(request, now)
        if not windows:
            return True
        cache = caches["throttle"]
        counters = {key: period + 1 for key, _, period, _ in windows}
        aincr = getattr(cache, "aincr_with_expiry", None)
        counts = await aincr(counters) if aincr is not None else _count(cache, counters)
        return self._allowed(windows, counts, now)

    def _windows(self, request: Request, now: float) -> list[tuple[str, int, int, int]]:
        """(key, allowed, period, window) of each scope that has a rate."""
        ident = self.ident(request)
        windows = []
        for scope in self.scopes:
            rate = api_settings.DEFAULT_THROTTLE_RATES.get(scope)
            if rate:
                allowed, period = parse_rate(rate)
                window = int(now // period)
                windows.append((f"throttle:{scope}:{ident}:{window}", allowed, period, window))
        return windows

    def _allowed(self, windows: list[tuple[str, int, int, int]], counts: list[int], now: float) -> bool:
        waits = [
            (window + 1) * period - now
            for (_, allowed, period, window), count in zip(windows, counts, strict=True)
            if count > allowed
        ]
        if waits:
            self._wait = max(waits)
            return False
        return True

    def wait(self) -> float | None:
        return self._wait


def counts_on_loop() -> bool:
    """Whether aallow_request counts without blocking the loop: Redis through its asyncio client
    (config/redis_cache.py), or the process's own memory."""
    cache = caches["throttle"]
    return hasattr(cache, "aincr_with_expiry") or isinstance(cache, LocMemCache)


def _count(cache: BaseCache, counters: dict[str, int]) -> list[int]:
    """One more hit on each window's counter (key -> seconds it lives), and the counts so far."""
    # REDIS_URL set (config/redis_cache.py SharedRedisCache): one count for every server process, one round
    # trip for every counter.
    incr_with_expiry = getattr(cache, "incr_with_expiry", None)
    if incr_with_expiry is not None:
        return incr_with_expiry(counters)
    counts = []
    for key, timeout in counters.items():
        cache.add(key, 0, timeout=timeout)
        try:
            counts.append(cache.incr(key))
        except ValueError:  # evicted between add and incr
            cache.set(key, 1, timeout=timeout)
            counts.append(1)
    return counts


class UserRateThrottle(WindowRateThrottle):
    scopes = ("user",)


class RunRateThrottle(WindowRateThrottle):
    """A run request: the user's rate for every request and the rate of runs, counted together."""

    scopes = ("user", "execute")


class AnonRateThrottle(WindowRateThrottle):
    scopes = ("anon",)
