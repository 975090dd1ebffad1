"""Shared by the GeminiPlatform tests: the key under test, requests and stream helpers."""

from __future__ import annotations

from typing import Any

import pytest

from apps.platforms.base import ChatMessage, Chunk, CompletionRequest
from apps.platforms.errors import PlatformError
from apps.platforms.gemini import GeminiPlatform

KEY = "gm-test-SECRET-1234567890"
MODEL = "gemini-2.5-flash"


def make_platform(url: str, timeout: float = 10.0) -> GeminiPlatform:
    return GeminiPlatform(api_key=KEY, base_url=url, default_model=MODEL, timeout=timeout)


def ask(text: str = "Hi", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(model=MODEL, messages=[ChatMessage(role="user", content=text)], **kwargs)


async def collect(platform: GeminiPlatform, request: CompletionRequest) -> list[Chunk]:
    return [chunk async for chunk in platform.stream(request)]


async def stream_error(
    platform: GeminiPlatform, request: CompletionRequest
) -> tuple[list[Chunk], PlatformError]:
    """The chunks a failing stream yielded before it raised, and the error."""
    chunks: list[Chunk] = []
    with pytest.raises(PlatformError) as caught:
        async for chunk in platform.stream(request):
            chunks.append(chunk)
    return chunks, caught.value


async def failure(platform: GeminiPlatform, request: CompletionRequest, *, streaming: bool) -> PlatformError:
    """The PlatformError of a call that must fail (a stream must fail before yielding anything)."""
    if streaming:
        chunks, error = await stream_error(platform, request)
        assert chunks == []
        return error
    with pytest.raises(PlatformError) as caught:
        await platform.generate(request)
    return caught.value
