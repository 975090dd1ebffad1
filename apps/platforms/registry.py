"""The configured platforms of this process, and the order to fall back through.

`PlatformRegistry` is plain Python (the engine receives one and never imports Django); `get_registry()`
builds the process-wide one from settings on first use and keeps it, so every platform keeps one SDK client
with its connection pool for the life of the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from apps.platforms.base import Platform, Usage
from apps.platforms.errors import PlatformError

logger = logging.getLogger(__name__)

PLATFORM_NAMES = ("openai", "anthropic", "gemini", "local")
# What to set to enable each platform; used in the error an agent gets when it asks for a missing one.
ENABLE_HINT = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible server)",
    "anthropic": "set ANTHROPIC_API_KEY",
    "gemini": "set GEMINI_API_KEY",
    "local": "set LOCAL_ENABLED=true",
}

PriceFunction = Callable[[str, str, Usage], Decimal]


class PlatformRegistry:
    def __init__(
        self,
        platforms: Mapping[str, Platform],
        *,
        fallback_order: Sequence[str] = PLATFORM_NAMES,
        default: str | None = None,
        pricing: PriceFunction | None = None,
    ) -> None:
        self._platforms = dict(platforms)
        self.fallback_order = [name for name in fallback_order if name in self._platforms]
        # Configured platforms missing from the order still come last, so none is unreachable.
        self.fallback_order += [name for name in self._platforms if name not in self.fallback_order]
        self._default = default if default in self._platforms else None
        self._pricing = pricing

    def names(self) -> list[str]:
        return list(self.fallback_order)

    def __contains__(self, name: object) -> bool:
        return name in self._platforms

    def get(self, name: str) -> Platform:
        try:
            return self._platforms[name]
        except KeyError:
            configured = ", ".join(self.fallback_order) or "none"
            hint = ENABLE_HINT.get(name, f"known platforms are {', '.join(PLATFORM_NAMES)}")
            raise PlatformError(
                f"platform {name!r} is not configured (configured: {configured}); to enable it, {hint}",
                provider=name,
                kind="unavailable",
                retryable=False,
            ) from None

    def default_platform(self) -> str | None:
        if self._default:
            return self._default
        return self.fallback_order[0] if self.fallback_order else None

    def chain(self, preferred: str | None) -> list[str]:
        """The platforms to try, in order: the preferred one (or the default), then the fallback order."""
        first = preferred or self.default_platform()
        ordered = [first] if first else []
        return ordered + [name for name in self.fallback_order if name != first]

    def cost(self, platform: str, model: str, usage: Usage) -> Decimal:
        if self._pricing is None:
            return Decimal("0")
        return self._pricing(platform, model, usage)

    async def aclose(self) -> None:
        for platform in self._platforms.values():
            await platform.aclose()


_registry: PlatformRegistry | None = None
_lock = threading.Lock()


def get_registry() -> PlatformRegistry:
    """The process-wide registry, built from settings on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = build_registry_from_settings()
    return _registry


def set_registry(registry: PlatformRegistry | None) -> None:
    """Replace the process-wide registry (tests, or after settings change). None rebuilds on next use."""
    global _registry
    with _lock:
        _registry = registry


def build_registry_from_settings() -> PlatformRegistry:
    raise NotImplementedError("filled in by the platform adapters work (issue 4)")
