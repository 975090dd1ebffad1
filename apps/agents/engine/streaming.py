"""One streamed request: text deltas go to the client as they arrive, the final chunk gives usage."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from apps.agents.engine.events import OutputDelta
from apps.agents.engine.run import RunScope
from apps.platforms.base import Completion, CompletionRequest, Platform, Usage
from apps.platforms.errors import PlatformError


async def stream_completion(scope: RunScope, platform: Platform, request: CompletionRequest) -> Completion:
    """Stream `request`, emitting each text piece as an OutputDelta, and return the whole Completion.

    Usage, finish reason and tool calls come from the stream's final chunk, so a streamed run is accounted
    exactly like a generated one. Once a piece has been sent, `scope.sent_output` forbids retrying it.
    """
    parts: list[str] = []
    final = None
    chunks: AsyncIterator[Any] = platform.stream(request)
    closer = getattr(chunks, "aclose", None)
    try:
        async for chunk in chunks:
            if chunk.text:
                parts.append(chunk.text)
                scope.sent_output = True
                scope.state.streamed.append(chunk.text)
                await scope.send(OutputDelta(chunk.text))
            if chunk.usage is not None:  # settled even if the stream never finishes (spend control)
                scope.attempt_usage = chunk.usage
            if chunk.finish_reason is not None:
                final = chunk
    finally:
        # On cancellation or an error the generator may be suspended at a yield: close it now, which closes
        # the HTTP response, rather than whenever the garbage collector gets to it.
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
    if final is None:
        raise PlatformError(
            "the stream ended without a finish reason",
            provider=platform.name,
            kind="incomplete_stream",
            retryable=True,
        )
    return Completion(
        text="".join(parts),
        finish_reason=final.finish_reason,
        usage=final.usage or Usage(),
        model=final.model or request.model,
        tool_calls=final.tool_calls,
        provider_id=final.provider_id,
    )
