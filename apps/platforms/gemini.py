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
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from apps.platforms._gemini_wire import (
    API_VERSION,
    GENERATED_ID_PREFIX,
    MAX_SIGNATURES,
    PROVIDER,
    SKIP_SIGNATURE,
    _finish,
    _raise_if_prompt_blocked,
    _retry_info_delay,
    _tool_output,
    _usage,
    _wire_id,
)
from apps.platforms._http import REDACTED, incomplete_stream, malformed, scrub, status_error
from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    Platform,
    PlatformInfo,
    ToolCall,
)
from apps.platforms.errors import PlatformError

logger = logging.getLogger(__name__)

TIMEOUT_ERRORS = (httpx.TimeoutException, httpx2.TimeoutException, TimeoutError)
# The SDK sends through httpx2 by default, through httpx when GOOGLE_GENAI_HTTP_CLIENT=httpx.
TRANSPORT_ERRORS = (httpx.TransportError, httpx2.TransportError, OSError)
MALFORMED_ERRORS = (genai_errors.UnknownApiResponseError, json.JSONDecodeError, pydantic.ValidationError)

# The HTTP responses opened by the stream being started in the current task (see module docstring).
_opened_responses: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "gemini_opened_responses", default=None
)


async def _remember_response(response: Any) -> None:
    opened = _opened_responses.get()
    # Only streams: a later generate() in the same task must never be closed by an abandoned stream's cleanup.
    if opened is not None and response.request.url.params.get("alt") == "sse":
        opened.append(response)


def _seconds_to_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))  # HttpOptions.timeout is in milliseconds


class GeminiPlatform(Platform):
    name = "gemini"

    def __init__(
        self, *, api_key: str, base_url: str | None = None, default_model: str, timeout: float = 60.0
    ):
        self.default_model = default_model
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        # Thought signatures of the function calls we returned, by tool-call id, to replay them next turn.
        self._signatures: OrderedDict[str, bytes] = OrderedDict()
        self._client = genai.Client(
            enterprise=False,  # never Vertex, whatever GOOGLE_GENAI_USE_VERTEXAI in the environment says
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url,
                api_version=API_VERSION,
                timeout=_seconds_to_ms(timeout),
                retry_options=types.HttpRetryOptions(attempts=1),
                async_client_args={"event_hooks": {"response": [_remember_response]}},
            ),
        )

    def info(self) -> PlatformInfo:
        return PlatformInfo(name=self.name, default_model=self.default_model, base_url=self._base_url)

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    # ------------------------------------------------------------------ calls
    async def generate(self, request: CompletionRequest) -> Completion:
        model = request.model or self.default_model
        contents, config = self._build(request)
        try:
            # httpx's timeout bounds each read; this bounds the whole call, as CompletionRequest.timeout says.
            async with asyncio.timeout(request.timeout or self._timeout):
                response = await self._client.aio.models.generate_content(
                    model=model, contents=contents, config=config
                )
            return self._completion(response, model)
        except PlatformError:
            raise
        except Exception as exc:
            # `from None`: the SDK error's text embeds the provider's body, which may echo the key into a
            # logged traceback; our message keeps what matters, scrubbed.
            raise self._error(exc) from None

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        model = request.model or self.default_model
        contents, config = self._build(request)
        state = _StreamState(self, model)
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
            if sdk_stream is not None:
                await sdk_stream.aclose()
            for response in opened:
                await response.aclose()  # a no-op once read to the end; otherwise drops the connection

    # ------------------------------------------------------------------ request mapping
    def _build(self, request: CompletionRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
        system, contents = self._contents(request.messages)
        system_text = "\n\n".join(part for part in (request.system_prompt, *system) if part)
        config = types.GenerateContentConfig(
            system_instruction=system_text or None,
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            automatic_continuation=False,
        )
        if request.json_schema is not None:
            # response_json_schema takes plain JSON Schema; response_schema wants Gemini's OpenAPI subset.
            config.response_mime_type = "application/json"
            config.response_json_schema = dict(request.json_schema)
        if request.tools:
            declarations = [
                types.FunctionDeclaration(
                    name=tool.name, description=tool.description, parameters_json_schema=dict(tool.parameters)
                )
                for tool in request.tools
            ]
            config.tools = [types.Tool(function_declarations=declarations)]
        if request.timeout is not None:
            config.http_options = types.HttpOptions(timeout=_seconds_to_ms(request.timeout))
        return contents, config

    def _contents(self, messages: Sequence[ChatMessage]) -> tuple[list[str], list[types.Content]]:
        """(system texts, contents): Gemini has no system role in contents and calls the assistant "model".
        Consecutive tool results become one user turn, as Gemini expects for parallel calls."""
        system: list[str] = []
        contents: list[types.Content] = []
        tool_names: dict[str, str] = {}
        for message in messages:
            if message.role == "system":
                system.append(message.content)
                continue
            if message.role == "tool":
                call_id = message.tool_call_id or ""
                result = types.FunctionResponse(
                    id=_wire_id(call_id),
                    name=message.name or tool_names.get(call_id) or "tool",
                    response=_tool_output(message.content),
                )
                part = types.Part(function_response=result)
                last = contents[-1] if contents else None
                if last is not None and last.parts and all(p.function_response for p in last.parts):
                    last.parts.append(part)
                else:
                    contents.append(types.Content(role="user", parts=[part]))
                continue
            parts = [types.Part(text=message.content)] if message.content or not message.tool_calls else []
            for index, call in enumerate(message.tool_calls):
                tool_names[call.id] = call.name
                signature = self._signatures.get(call.id) or (SKIP_SIGNATURE if index == 0 else None)
                function_call = types.FunctionCall(
                    id=_wire_id(call.id), name=call.name, args=dict(call.arguments)
                )
                parts.append(types.Part(function_call=function_call, thought_signature=signature))
            contents.append(
                types.Content(role="model" if message.role == "assistant" else "user", parts=parts)
            )
        return system, contents

    # ------------------------------------------------------------------ response mapping
    def _completion(self, response: types.GenerateContentResponse, model: str) -> Completion:
        _raise_if_prompt_blocked(response)
        if not response.candidates:
            raise malformed(PROVIDER, "the response has no candidates")
        candidate = response.candidates[0]
        texts, calls = self._read_parts(candidate)
        text = "".join(texts)
        return Completion(
            text=text,
            finish_reason=_finish(candidate.finish_reason, has_text=bool(text), has_calls=bool(calls)),
            usage=_usage(response.usage_metadata),
            model=response.model_version or model,
            tool_calls=tuple(calls),
            provider_id=response.response_id,
        )

    def _read_parts(self, candidate: types.Candidate) -> tuple[list[str], list[ToolCall]]:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for part in (candidate.content.parts if candidate.content else None) or ():
            if part.thought:
                continue  # a thinking summary, not the answer
            if part.text:
                texts.append(part.text)
            if part.function_call is not None:
                call = part.function_call
                if not call.name:
                    raise malformed(PROVIDER, "a function call without a name")
                call_id = call.id or f"{GENERATED_ID_PREFIX}{uuid.uuid4().hex[:24]}"
                calls.append(ToolCall(id=call_id, name=call.name, arguments=dict(call.args or {})))
                if part.thought_signature:
                    self._remember_signature(call_id, part.thought_signature)
        return texts, calls

    def _remember_signature(self, call_id: str, signature: bytes) -> None:
        self._signatures[call_id] = signature
        while len(self._signatures) > MAX_SIGNATURES:
            self._signatures.popitem(last=False)

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


class _StreamState:
    """What a stream has said so far. Gemini sends function calls whole and running usage on every chunk, so
    the last usage seen is the total, and the finish reason arrives on the last chunk."""

    def __init__(self, platform: GeminiPlatform, model: str) -> None:
        self.platform = platform
        self.model = model
        self.yielded = False
        self.has_text = False
        self.calls: list[ToolCall] = []
        self.finish_reason: Any = None
        self.usage: types.GenerateContentResponseUsageMetadata | None = None
        self.provider_id: str | None = None

    def observe(self, response: types.GenerateContentResponse) -> list[str]:
        _raise_if_prompt_blocked(response)
        self.model = response.model_version or self.model
        self.provider_id = response.response_id or self.provider_id
        self.usage = response.usage_metadata or self.usage
        if not response.candidates:
            return []
        candidate = response.candidates[0]
        texts, calls = self.platform._read_parts(candidate)
        self.calls.extend(calls)
        self.has_text = self.has_text or any(texts)
        if candidate.finish_reason is not None:
            self.finish_reason = candidate.finish_reason
        return [text for text in texts if text]

    def final(self) -> Chunk:
        if self.finish_reason is None:
            raise incomplete_stream(PROVIDER, "the stream closed without a finishReason")
        finish = _finish(self.finish_reason, has_text=self.has_text, has_calls=bool(self.calls))
        return Chunk(
            finish_reason=finish,
            usage=_usage(self.usage),
            model=self.model,
            tool_calls=tuple(self.calls),
            provider_id=self.provider_id,
        )
