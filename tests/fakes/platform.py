"""An in-process, scriptable Platform for pure engine unit tests (no HTTP, no Django, no database).

Queue what the next calls answer (`reply`, `fail`), run the engine, then assert on `requests` (every
CompletionRequest it was sent) and on stream bookkeeping (`streams_closed`, `cancelled`). With nothing queued
a call answers a default reply. The HTTP fakes (tests/fakes/*_server.py) test the real adapters; this one
tests the engine's decisions quickly and deterministically.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from apps.platforms.base import (
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    Platform,
    ToolCall,
    Usage,
)
from apps.platforms.errors import ErrorKind, PlatformError
from apps.platforms.registry import PlatformRegistry

RETRYABLE_KINDS = frozenset(
    {"rate_limited", "server_error", "timeout", "connection", "incomplete_stream", "malformed_response"}
)
DEFAULT_STATUS: dict[str, int] = {
    "rate_limited": 429,
    "server_error": 503,
    "bad_request": 400,
    "auth": 401,
    "not_found": 404,
}
DEFAULT_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.0-flash",
}
# A deterministic price list for the fake registry: USD per token.
PRICE_IN = Decimal("0.000001")
PRICE_OUT = Decimal("0.000002")


def platform_error(
    kind: ErrorKind,
    *,
    provider: str = "fake",
    status: int | None = None,
    retryable: bool | None = None,
    retry_after: float | None = None,
    message: str | None = None,
) -> PlatformError:
    return PlatformError(
        message or f"fake {kind}",
        provider=provider,
        kind=kind,
        retryable=kind in RETRYABLE_KINDS if retryable is None else retryable,
        status=status if status is not None else DEFAULT_STATUS.get(kind),
        retry_after=retry_after,
    )


def tool_call(name: str, arguments: Mapping[str, Any] | None = None, call_id: str | None = None) -> ToolCall:
    return ToolCall(id=call_id or f"call_{name}", name=name, arguments=dict(arguments or {}))


@dataclass
class FakeReply:
    text: str = "Hello from the fake platform."
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=lambda: Usage(10, 5))
    finish_reason: FinishReason | None = None  # default: "tool_calls" with calls, else "stop"
    model: str | None = None  # default: the requested model
    chunks: list[str] | None = None  # default: the text word by word
    delay: float = 0.0  # seconds before answering (a real sleep: use small values)
    chunk_delay: float = 0.0
    # Streams: after `fail_after` text chunks raise `error` (or end without a finish chunk if error is None).
    fail_after: int | None = None
    error: PlatformError | None = None
    hang: bool = False  # never answer
    # Reported through request.on_usage before answering (like Anthropic's message_start): what a request
    # cut short by a timeout or cancel has used.
    usage_so_far: Usage | None = None

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        words = self.text.split(" ") if self.text else []
        return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


class FakePlatform(Platform):
    def __init__(self, name: str = "openai", default_model: str | None = None) -> None:
        self.name = name
        self.default_model = default_model or DEFAULT_MODELS.get(name, "fake-model")
        self.script: deque[FakeReply | PlatformError] = deque()
        self.requests: list[CompletionRequest] = []
        self.streams_opened = 0
        self.streams_closed = 0  # generator finalised: normal end, error, aclose() or cancellation
        self.cancelled = 0  # a call was cancelled while waiting for the "provider"
        self.request_seen = asyncio.Event()
        self.closed = 0  # aclose() calls: whoever owns the registry released its connections

    # ------------------------------------------------------------------ scripting
    def reply(self, text: str = "Hello from the fake platform.", **kwargs: Any) -> FakePlatform:
        self.script.append(FakeReply(text=text, **kwargs))
        return self

    def fail(self, kind: ErrorKind = "server_error", *, times: int = 1, **kwargs: Any) -> FakePlatform:
        for _ in range(times):
            self.script.append(platform_error(kind, provider=self.name, **kwargs))
        return self

    def _next(self, request: CompletionRequest) -> FakeReply:
        self.requests.append(request)
        self.request_seen.set()
        item = self.script.popleft() if self.script else FakeReply()
        if isinstance(item, PlatformError):
            raise item
        if item.usage_so_far is not None and request.on_usage is not None:
            request.on_usage(item.usage_so_far)
        return item

    def _completion(self, reply: FakeReply, request: CompletionRequest) -> Completion:
        return Completion(
            text=reply.text,
            finish_reason=reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
            usage=reply.usage,
            model=reply.model or request.model or self.default_model,
            tool_calls=tuple(reply.tool_calls),
            provider_id="fake-1",
        )

    async def _wait(self, seconds: float, hang: bool = False) -> None:
        try:
            if hang:
                await asyncio.Event().wait()
            elif seconds:
                await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    # ------------------------------------------------------------------ Platform
    async def aclose(self) -> None:
        self.closed += 1

    async def generate(self, request: CompletionRequest) -> Completion:
        reply = self._next(request)
        await self._wait(reply.delay, reply.hang)
        return self._completion(reply, request)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        reply = self._next(request)
        self.streams_opened += 1
        try:
            await self._wait(reply.delay, reply.hang)
            for index, piece in enumerate(reply.pieces()):
                if reply.fail_after is not None and index >= reply.fail_after:
                    raise reply.error or platform_error("incomplete_stream", provider=self.name)
                yield Chunk(text=piece)
                await self._wait(reply.chunk_delay)
            done = self._completion(reply, request)
            yield Chunk(
                finish_reason=done.finish_reason,
                usage=done.usage,
                model=done.model,
                tool_calls=done.tool_calls,
                provider_id=done.provider_id,
            )
        finally:
            self.streams_closed += 1


def fake_cost(platform: str, model: str, usage: Usage) -> Decimal:
    return usage.input_tokens * PRICE_IN + usage.output_tokens * PRICE_OUT


def build_fake_platform_registry(
    platforms: Mapping[str, FakePlatform], order: tuple[str, ...] = ("openai", "anthropic", "gemini")
) -> PlatformRegistry:
    return PlatformRegistry(platforms, fallback_order=order, pricing=fake_cost)


@dataclass
class FakePlatforms:
    """Three FakePlatforms named like the real ones, and a registry over them (fallback in that order)."""

    openai: FakePlatform
    anthropic: FakePlatform
    gemini: FakePlatform
    registry: PlatformRegistry

    def __iter__(self) -> Iterator[FakePlatform]:
        return iter((self.openai, self.anthropic, self.gemini))


@pytest.fixture
def fake_platforms() -> FakePlatforms:
    platforms = {name: FakePlatform(name) for name in ("openai", "anthropic", "gemini")}
    return FakePlatforms(**platforms, registry=build_fake_platform_registry(platforms))
