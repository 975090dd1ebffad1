"""A streamed answer's server-sent events read straight off the HTTP response, each `data:` payload parsed by
json.loads into plain dicts and lists.

Why not the SDK's own stream: for every chunk it builds a pydantic model tree (ChatCompletionChunk with its
choices, delta and usage), about 60 % of the server's CPU with 500 streams open (`bench/load_streams.py
--profile`), only for the adapter to read five fields off it. The SDK still sends the request, so its client
options, auth and status errors (raised before the body is read) are unchanged; what it did while reading
the body is done here alike: a payload carrying `error` raises the SDK's APIError with that body, a timeout or
a dropped connection raises its APITimeoutError / APIConnectionError, and a payload that is not JSON raises
ValueError. Each adapter maps these exactly as before (_http.sdk_error).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import anyio
import httpx2

#: The most seconds spent reading what follows `[DONE]`, so the connection can go back to the pool (the SDK's
#: own bound); a server that keeps sending after it loses its connection instead.
DRAIN_SECONDS = 0.1
DONE = "[DONE]"


class JsonEventStream:
    """The `data:` payloads of one SSE response, parsed, up to `[DONE]`; `close()` releases the response."""

    def __init__(self, response: httpx2.Response, *, sdk: ModuleType) -> None:
        self.response = response
        self._sdk = sdk

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._payloads()

    async def close(self) -> None:
        await self.response.aclose()

    async def _payloads(self) -> AsyncIterator[Any]:
        lines = self.response.aiter_lines()
        data: list[str] = []
        try:
            async for line in lines:
                if line.startswith("data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(" ") else value)
                    continue
                if line or not data:
                    continue  # `event:`, `id:`, `retry:` and comments: nothing a chat stream needs
                payload = data[0] if len(data) == 1 else "\n".join(data)
                data = []
                if payload.startswith(DONE):
                    await self._drain(lines)
                    return
                event = json.loads(payload)
                if isinstance(event, dict) and event.get("error"):
                    raise self._error_event(event["error"])
                yield event
        except httpx2.TimeoutException as exc:
            raise self._sdk.APITimeoutError(request=self.response.request) from exc
        except (httpx2.RequestError, anyio.EndOfStream) as exc:
            raise self._sdk.APIConnectionError(request=self.response.request) from exc

    def _error_event(self, error: Any) -> Exception:
        """The SDK's APIError for an error object inside a 200 stream, as its own stream raises it."""
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        return self._sdk.APIError(message, request=self.response.request, body=error)

    @staticmethod
    async def _drain(lines: AsyncIterator[str]) -> None:
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _ in lines:
                    pass
        except (TimeoutError, httpx2.RequestError, anyio.EndOfStream):
            pass  # the answer is complete; only the connection's reuse is lost (close() ends it)
