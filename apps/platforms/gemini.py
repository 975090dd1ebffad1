"""Gemini through the official `google-genai` SDK (3.x), async client only.

Things about this SDK that shape the code below (read in its source, google/genai/_api_client.py, models.py):
- It retries by itself unless told not to: tenacity around every request (per HttpRetryOptions), a hidden
  extra attempt after aiohttp connection errors when no retry options are set, and "automatic continuation"
  that re-sends a request when a stream stops on a continuation token. The engine alone decides retries, so
  all three are off: `HttpRetryOptions(attempts=1)`, `automatic_continuation=False` (and automatic function
  calling too, which would call Python tools itself).
- Its default API version is now "v1"; we pin "v1beta", which serves every feature used here
  (responseJsonSchema, parametersJsonSchema, function-call ids).
- A stream is a chain of nested async generators; closing the outermost one does not close the HTTP response
  (only the garbage collector would, later). So the HTTP responses this platform opens are tracked with an
  httpx event hook and closed explicitly when a stream ends, is closed early or its task is cancelled.
- The key travels in the `x-goog-api-key` header, never in the URL; messages are still scrubbed.

The request and answer mapping is in gemini_wire.py; this module holds the client, the calls and the error
mapping.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from apps.platforms import _http
from apps.platforms._http import REDACTED, incomplete_stream, malformed, scrub, status_error
from apps.platforms.base import Chunk, Completion, CompletionRequest, Platform, PlatformInfo
from apps.platforms.errors import PlatformError
from apps.platforms.gemini_wire import (
    GENERATED_ID_PREFIX,
    PROVIDER,
    SKIP_SIGNATURE,
    Signatures,
    StreamState,
    build_request,
    completion_of,
    seconds_to_ms,
    usage_of,
)

logger = logging.getLogger(__name__)

API_VERSION = "v1beta"

TIMEOUT_ERRORS = (httpx.TimeoutException, httpx2.TimeoutException, TimeoutError)
# The SDK sends through httpx2 by default, through httpx when GOOGLE_GENAI_HTTP_CLIENT=httpx.
TRANSPORT_ERRORS = (httpx.TransportError, httpx2.TransportError, OSError)
MALFORMED_ERRORS = (genai_errors.UnknownApiResponseError, json.JSONDecodeError, pydantic.ValidationError)

# The HTTP responses opened by the stream being started in the current task (see module docstring).
_opened_responses: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "gemini_opened_responses", default=None
)


def _httpx_module() -> Any:
    """httpx2, or httpx where the deployment asks the SDK for it (GOOGLE_GENAI_HTTP_CLIENT=httpx)."""
    return httpx if os.environ.get("GOOGLE_GENAI_HTTP_CLIENT", "").strip().lower() == "httpx" else httpx2


async def _remember_response(response: Any) -> None:
    opened = _opened_responses.get()
    # Only streams: a later generate() in the same task must never be closed by an abandoned stream's cleanup.
    if opened is not None and response.request.url.params.get("alt") == "sse":
        opened.append(response)


class GeminiPlatform(Platform):
    name = "gemini"
    # No `user` field in Gemini's API.
    supported_options = frozenset(
        {"stop", "seed", "top_p", "presence_penalty", "frequency_penalty", "images", "tool_choice"}
    )

    def __init__(
        self, *, api_key: str, base_url: str | None = None, default_model: str, timeout: float = 60.0
    ):
        self.default_model = default_model
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        self._signatures = Signatures()
        self._client = genai.Client(
            enterprise=False,  # never Vertex, whatever GOOGLE_GENAI_USE_VERTEXAI in the environment says
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url,
                api_version=API_VERSION,
                timeout=seconds_to_ms(timeout),
                retry_options=types.HttpRetryOptions(attempts=1),
                async_client_args={
                    "event_hooks": {"response": [_remember_response]},
                    # Our own httpx transport keeps the SDK on httpx, whose event hook the stream tracking
                    # above needs: with aiohttp installed (the openai and anthropic SDKs' transport here) the
                    # SDK would otherwise send through aiohttp, which has no such hook. Per loop, as the SDK's
                    # own pools are (it stops making them when given a transport).
                    "transport": _http.PerLoopTransport(_httpx_module().AsyncHTTPTransport),
                },
            ),
        )

    def info(self) -> PlatformInfo:
        return PlatformInfo(name=self.name, default_model=self.default_model, base_url=self._base_url)

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    async def generate(self, request: CompletionRequest) -> Completion:
        model = request.model or self.default_model
        contents, config = build_request(request, self._signatures)
        try:
            # httpx's timeout bounds each read; this bounds the whole call, as CompletionRequest.timeout says.
            async with asyncio.timeout(request.timeout or self._timeout):
                response = await self._client.aio.models.generate_content(
                    model=model, contents=contents, config=config
                )
            return completion_of(response, model, self._signatures)
        except PlatformError:
            raise
        except Exception as exc:
            # `from None`: the SDK error's text embeds the provider's body, which may echo the key into a
            # logged traceback; our message keeps what matters, scrubbed.
            raise self._error(exc) from None

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        model = request.model or self.default_model
        contents, config = build_request(request, self._signatures)
        state = StreamState(self._signatures, model)
        opened: list[Any] = []
        _opened_responses.set(opened)
        sdk_stream = None
        try:
            try:
                sdk_stream = await self._client.aio.models.generate_content_stream(
                    model=model, contents=contents, config=config
                )
                async for response in sdk_stream:
                    for text in state.observe(response):
                        state.yielded = True
                        yield Chunk(text=text)
            except PlatformError:
                raise
            except Exception as exc:
                raise self._error(exc, midstream=state.yielded) from None  # see generate()
            yield state.final()
        finally:
            _opened_responses.set(None)
            # Gemini sends running usage on every chunk: report the last one even for a stream cut short.
            if request.on_usage is not None and state.usage is not None:
                request.on_usage(usage_of(state.usage))
            if sdk_stream is not None:
                await sdk_stream.aclose()
            for response in opened:
                await response.aclose()  # a no-op once read to the end; otherwise drops the connection

    # ------------------------------------------------------------------ errors
    def _error(self, exc: Exception, *, midstream: bool = False) -> PlatformError:
        if isinstance(exc, genai_errors.APIError):
            return self._status_error(exc)
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, MALFORMED_ERRORS):
            return malformed(PROVIDER, detail)
        if isinstance(exc, TIMEOUT_ERRORS):
            return PlatformError(detail, provider=PROVIDER, kind="timeout", retryable=True)
        if isinstance(exc, TRANSPORT_ERRORS):
            if midstream:  # text already went out: the stream broke, it did not merely fail to connect
                return incomplete_stream(PROVIDER, detail)
            return PlatformError(detail, provider=PROVIDER, kind="connection", retryable=True)
        if isinstance(exc, ValueError):
            # The SDK refused to build the request (an option Gemini does not support): our request is wrong.
            return PlatformError(detail, provider=PROVIDER, kind="bad_request", retryable=False)
        logger.warning("unexpected error from the Gemini SDK: %s", detail)
        return PlatformError(detail, provider=PROVIDER, kind="malformed_response", retryable=False)

    def _status_error(self, exc: genai_errors.APIError) -> PlatformError:
        message = self._scrub(" ".join(str(p) for p in (exc.status, exc.message) if p) or f"HTTP {exc.code}")
        # An error event inside a stream may lack a usable code: then the server failed.
        status = exc.code if isinstance(exc.code, int) and exc.code >= 400 else 500
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        error = status_error(PROVIDER, status=status, message=message, headers=headers, secret=None)
        if error.retry_after is None:
            # Gemini's quota errors carry a google.rpc.RetryInfo detail, often without any header.
            error.retry_after = _retry_info_delay(exc.details)
        return error

    def _scrub(self, text: str) -> str:
        """Never let a key out: providers and HTTP libraries may echo it, e.g. as a `key=` query parameter."""
        return scrub(re.sub(r"(?i)(key=)[^&\s'\"]+", rf"\1{REDACTED}", text), self._api_key)


def _retry_info_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail ({"retryDelay": "7s"}), which quota errors carry."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for detail in (error or {}).get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


__all__ = ["GENERATED_ID_PREFIX", "SKIP_SIGNATURE", "GeminiPlatform"]
