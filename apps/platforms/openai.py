"""OpenAI Chat Completions through the official `openai` SDK; also any OpenAI-compatible server (Ollama, vLLM,
LM Studio) reached through `base_url`.

The SDK's own retries are off (max_retries=0): the engine alone decides whether to retry or fall back, from
the PlatformError's `retryable` flag.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apps.platforms import _http
from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    Platform,
    PlatformInfo,
    ToolCall,
    ToolChoice,
    Usage,
)
from apps.platforms.errors import PlatformError

logger = logging.getLogger(__name__)

PROVIDER = "openai"
# Local OpenAI-compatible servers need no key, but the SDK refuses to build a client without one.
NO_KEY = "no-key-required"
# Error codes with which OpenAI (and Azure OpenAI) refuse a request on content-policy grounds.
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
# Error types/codes of an error event inside a stream (no HTTP status to go by).
RATE_LIMIT_LABELS = frozenset({"rate_limit_error", "rate_limit_exceeded", "tokens", "requests"})
BAD_REQUEST_LABELS = frozenset({"invalid_request_error", "context_length_exceeded"})
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated single-function form
    "content_filter": "content_filter",
}


class OpenAIPlatform(Platform):
    name = "openai"
    supported_options = frozenset(
        {
            "stop",
            "seed",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "user",
            "images",
            "tool_choice",
            "logprobs",
            "top_logprobs",
        }
    )

    def __init__(
        self, *, api_key: str, base_url: str | None = None, default_model: str, timeout: float = 60.0
    ) -> None:
        self.default_model = default_model
        self.base_url = base_url or None
        self.timeout = timeout
        self._secret = api_key
        self._clients = _http.PerLoopClient(
            lambda: openai.AsyncOpenAI(
                api_key=api_key or (NO_KEY if self.base_url else ""),
                base_url=self.base_url,
                timeout=timeout,
                max_retries=0,
            ),
            lambda client: client.close(),
        )
        # OpenAI itself wants `max_completion_tokens` (its reasoning models reject `max_tokens`), while the
        # OpenAI-compatible servers we target (Ollama, LM Studio, older vLLM) only know `max_tokens`. The
        # choice follows the configured endpoint, never the model name.
        self._max_tokens_field = "max_tokens" if self.base_url else "max_completion_tokens"

    def info(self) -> PlatformInfo:
        return PlatformInfo(name=self.name, default_model=self.default_model, base_url=self.base_url)

    async def aclose(self) -> None:
        await self._clients.aclose()

    # ------------------------------------------------------------------ requests
    async def generate(self, request: CompletionRequest) -> Completion:
        params = self._params(request)
        try:
            # The SDK timeout bounds each network wait; this bounds the whole call, as the request promises.
            async with asyncio.timeout(request.timeout or self.timeout):
                response = await self._clients.get().chat.completions.create(**params)
        except Exception as exc:
            raise self._error(exc) from None
        return self._completion(response, params["model"])

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        # For a stream the timeout bounds connecting and each wait for the next chunk, not the whole stream
        # (a long answer may rightly take longer); the engine owns the overall deadline.
        params = self._params(request)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        try:
            sdk_stream = await self._clients.get().chat.completions.create(**params)
        except Exception as exc:
            raise self._error(exc) from None
        state = _StreamState(model=params["model"])
        try:
            async for event in sdk_stream:
                text = state.add(event)
                if text:
                    yield Chunk(text=text)
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            # Runs on normal end, on error, on aclose() and on cancellation: the HTTP response is closed, so
            # the provider stops generating (and billing) for a consumer that went away.
            await sdk_stream.close()
            # Whatever usage OpenAI reported (it sends it in the last chunk only) goes to the engine even if
            # the stream was cut short: a timed-out or cancelled attempt still records what it used.
            if request.on_usage is not None and state.usage is not None:
                request.on_usage(state.usage)
        yield state.final_chunk()

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": to_openai_messages(request),
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params[self._max_tokens_field] = request.max_tokens
        if request.json_schema is not None:
            # strict=False: strict mode rejects common schemas (optional properties, no additionalProperties),
            # and the engine validates the parsed output against the schema anyway.
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "schema": dict(request.json_schema),
                    "strict": request.json_schema_strict,
                },
            }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
                for tool in request.tools
            ]
        if request.tool_choice is not None:
            params["tool_choice"] = openai_tool_choice(request.tool_choice)
        sampling = request.sampling
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        if sampling.logprobs:
            params["logprobs"] = True
        for name in ("seed", "top_p", "presence_penalty", "frequency_penalty", "user", "top_logprobs"):
            value = getattr(sampling, name)
            if value is not None:
                params[name] = value
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    # ------------------------------------------------------------------ responses
    def _completion(self, response: object, model: str) -> Completion:
        if not isinstance(response, ChatCompletion):
            raise _http.malformed(PROVIDER, f"expected a chat.completion, got {type(response).__name__}")
        try:
            choice = response.choices[0]
            message = choice.message
            if message.refusal:
                raise refusal(message.refusal, self._secret)
            tool_calls = tuple(
                ToolCall(
                    id=call.id,
                    name=call.function.name,
                    arguments=_http.parse_arguments(
                        PROVIDER, call.function.arguments, tool=call.function.name
                    ),
                )
                for call in message.tool_calls or ()
                if call.type == "function"
            )
            usage = response.usage
            return Completion(
                text=message.content or "",
                finish_reason=normalise_finish(choice.finish_reason, bool(tool_calls)),
                usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(),
                model=response.model or model,
                tool_calls=tool_calls,
                provider_id=response.id,
                logprobs=_logprobs(choice),
            )
        except (AttributeError, IndexError, TypeError) as exc:
            raise _http.malformed(PROVIDER, _http.describe(exc, self._secret)) from None

    def _error(self, exc: Exception) -> PlatformError:
        """Map anything the SDK (or the wire) raised onto a PlatformError; exhaustive by design."""
        secret = self._secret
        if isinstance(exc, PlatformError):
            return exc
        if isinstance(exc, openai.APITimeoutError | TimeoutError):
            return PlatformError(
                _http.describe(exc, secret), provider=PROVIDER, kind="timeout", retryable=True
            )
        if isinstance(exc, openai.APIConnectionError):
            return PlatformError(
                _http.describe(exc, secret), provider=PROVIDER, kind="connection", retryable=True
            )
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (400, 403) and exc.code in CONTENT_POLICY_CODES:
                return PlatformError(
                    _http.scrub(exc.message, secret),
                    provider=PROVIDER,
                    kind="refusal",
                    retryable=False,
                    status=exc.status_code,
                )
            return _http.status_error(
                PROVIDER,
                status=exc.status_code,
                message=exc.message,
                headers=exc.response.headers,
                secret=secret,
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return _http.malformed(PROVIDER, exc.message, secret)
        if isinstance(exc, openai.APIError):
            # An error object inside a 200 stream: no status, so go by the error type the provider named.
            labels = {exc.type, exc.code}
            message = _http.scrub(exc.message, secret)
            if labels & RATE_LIMIT_LABELS:
                return PlatformError(message, provider=PROVIDER, kind="rate_limited", retryable=True)
            if labels & BAD_REQUEST_LABELS:
                return PlatformError(message, provider=PROVIDER, kind="bad_request", retryable=False)
            return PlatformError(message, provider=PROVIDER, kind="server_error", retryable=True)
        if isinstance(exc, ValueError):  # the body or an SSE event was not JSON, or not the expected shape
            return _http.malformed(PROVIDER, _http.describe(exc, secret))
        transport = _http.transport_error(PROVIDER, exc, secret)
        if transport is not None:
            return transport
        # Anything else (an SDK error we do not know): not retried, but another platform may still answer.
        logger.warning("unexpected %s from the openai SDK", type(exc).__name__)
        return PlatformError(
            _http.describe(exc, secret), provider=PROVIDER, kind="server_error", retryable=False
        )


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """What a stream has said so far; tool calls arrive as deltas keyed by index and are assembled here."""

    model: str
    provider_id: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _PendingCall] = field(default_factory=dict)

    def add(self, event: object) -> str:
        """Take one chunk in; return its text (may be empty)."""
        if not isinstance(event, ChatCompletionChunk):
            raise _http.malformed(PROVIDER, f"expected a chat.completion.chunk, got {type(event).__name__}")
        try:
            self.provider_id = event.id or self.provider_id
            self.model = event.model or self.model
            if event.usage is not None:
                self.usage = Usage(event.usage.prompt_tokens or 0, event.usage.completion_tokens or 0)
            text = ""
            for choice in event.choices or ():
                if choice.index not in (0, None):
                    continue  # we never ask for n > 1
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
                delta = choice.delta
                if delta is None:
                    continue
                text += delta.content or ""
                if delta.refusal:
                    self.refusal.append(delta.refusal)
                for call in delta.tool_calls or ():
                    self._add_call(call.index, call.id, call.function)
            return text
        except (AttributeError, TypeError) as exc:
            raise _http.malformed(PROVIDER, _http.describe(exc, None)) from None

    def _add_call(self, index: int | None, call_id: str | None, function: Any) -> None:
        if index is None:  # some compatible servers send whole calls without an index
            index = len(self.calls) if call_id or not self.calls else max(self.calls)
        pending = self.calls.setdefault(index, _PendingCall())
        pending.id = call_id or pending.id
        if function is not None:
            pending.name = function.name or pending.name
            pending.arguments.append(function.arguments or "")

    def final_chunk(self) -> Chunk:
        if self.refusal:
            raise refusal("".join(self.refusal), None)
        if self.finish_reason is None:
            raise _http.incomplete_stream(PROVIDER, "no finish_reason")
        tool_calls = tuple(
            ToolCall(
                id=call.id,
                name=call.name,
                arguments=_http.parse_arguments(PROVIDER, "".join(call.arguments), tool=call.name),
            )
            for _, call in sorted(self.calls.items())
        )
        # Usage: OpenAI sends it in a last chunk because we ask (include_usage). Some compatible servers
        # ignore that option; a stream that did finish is complete all the same, so we accept it and record
        # only what was reported (0 if nothing) rather than estimate tokens. A stream without a finish reason
        # is never accepted (above), with or without usage.
        if self.usage is None:
            logger.info("stream from %s finished without usage; recording 0 tokens", PROVIDER)
        return Chunk(
            finish_reason=normalise_finish(self.finish_reason, bool(tool_calls)),
            usage=self.usage or Usage(),
            model=self.model,
            tool_calls=tool_calls,
            provider_id=self.provider_id,
        )


def normalise_finish(reason: str | None, has_tool_calls: bool) -> FinishReason:
    if reason is None:
        raise _http.malformed(PROVIDER, "no finish_reason")
    # Some compatible servers (older Ollama) report "stop" when the answer is tool calls.
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    normalised = FINISH_REASONS.get(reason)
    if normalised is None:
        # A compatible server's own word for a natural end ("eos", "end_turn"): the answer is complete.
        logger.warning("unknown finish_reason %r from %s, treated as stop", reason, PROVIDER)
        return "stop"
    return normalised


def refusal(text: str, secret: str | None) -> PlatformError:
    return PlatformError(
        _http.scrub(f"the model refused: {text}", secret), provider=PROVIDER, kind="refusal", retryable=False
    )


def to_openai_messages(request: CompletionRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    messages.extend(to_openai_message(m) for m in request.messages)
    return messages


def _logprobs(choice: Any) -> tuple[dict[str, Any], ...] | None:
    content = choice.logprobs.content if choice.logprobs is not None else None
    if content is None:
        return None
    return tuple(item.model_dump(mode="json") for item in content)


def openai_tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
                }
                for call in message.tool_calls
            ],
        }
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        parts.extend(
            {"type": "image_url", "image_url": {"url": f"data:{image.media_type};base64,{image.data}"}}
            for image in message.images
        )
        return {"role": message.role, "content": parts}
    return {"role": message.role, "content": message.content}
