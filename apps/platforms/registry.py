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
from importlib import import_module

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


def installed_registry() -> PlatformRegistry | None:
    """The process-wide registry if one has been built or set, without building one."""
    return _registry


def set_registry(registry: PlatformRegistry | None) -> None:
    """Replace the process-wide registry (tests, or after settings change). None rebuilds on next use."""
    global _registry
    with _lock:
        _registry = registry


# An OpenAI-compatible server (Ollama, vLLM, LM Studio) needs no key, but the SDK will not start without one.
OPENAI_PLACEHOLDER_KEY = "not-needed"
# The platforms reached with an API key: (registry name, prefix of their settings <PREFIX>_API_KEY,
# _BASE_URL and _DEFAULT_MODEL, adapter class). The adapter's module is imported only when its key is set.
HOSTED_PLATFORMS = (
    ("openai", "OPENAI", "apps.platforms.openai:OpenAIPlatform"),
    ("anthropic", "ANTHROPIC", "apps.platforms.anthropic:AnthropicPlatform"),
    ("gemini", "GEMINI", "apps.platforms.gemini:GeminiPlatform"),
)


def build_registry_from_settings() -> PlatformRegistry:
    """Every platform the settings configure, and nothing else.

    Adapter modules are imported only for configured platforms, so a process without keys never imports the
    openai / anthropic / google SDKs (nor llama.cpp when the local model is off).
    """
    from django.conf import settings

    from apps.platforms.pricing import Pricing

    timeout = float(settings.PLATFORM_REQUEST_TIMEOUT)
    platforms: dict[str, Platform] = {}
    for name, prefix, adapter in HOSTED_PLATFORMS:
        api_key = getattr(settings, f"{prefix}_API_KEY")
        base_url = getattr(settings, f"{prefix}_BASE_URL") or None
        if name == "openai" and base_url and not api_key:
            api_key = OPENAI_PLACEHOLDER_KEY  # an OpenAI-compatible server is configured by its URL alone
        if not api_key:
            continue
        module, class_name = adapter.split(":")
        platform_class = getattr(import_module(module), class_name)
        platforms[name] = platform_class(
            api_key=api_key,
            base_url=base_url,
            default_model=getattr(settings, f"{prefix}_DEFAULT_MODEL"),
            timeout=timeout,
        )
    if settings.LOCAL_ENABLED:
        from apps.platforms.local import LocalPlatform

        platforms["local"] = LocalPlatform(
            model_path=settings.LOCAL_MODEL_PATH or None,
            default_model=settings.LOCAL_DEFAULT_MODEL,
            n_ctx=settings.LOCAL_CONTEXT_TOKENS,
            n_threads=settings.LOCAL_THREADS,
        )

    order = [name.strip() for name in settings.PLATFORM_FALLBACK_ORDER if name.strip()]
    for name in order:
        if name not in PLATFORM_NAMES:
            logger.warning("PLATFORM_FALLBACK_ORDER names an unknown platform %r; ignored", name)
    default = settings.DEFAULT_PLATFORM or None
    if default and default not in platforms:
        hint = ENABLE_HINT.get(default, f"known platforms are {', '.join(PLATFORM_NAMES)}")
        logger.warning("DEFAULT_PLATFORM %r is not configured (%s); using the fallback order", default, hint)
    if not platforms:
        logger.warning("no AI platform is configured; set a provider key or LOCAL_ENABLED=true")
    registry = PlatformRegistry(
        platforms, fallback_order=order, default=default, pricing=Pricing(settings.MODEL_PRICES)
    )
    logger.info("platforms configured: %s", ", ".join(registry.names()) or "none")
    return registry
