"""Anthropic Messages API through the official `anthropic` SDK (SDK-internal retries off: max_retries=0).

Structured output (request.json_schema) is a forced tool: the schema becomes the input schema of one tool,
`OUTPUT_TOOL`, that the model must call, and the call's input is returned as the completion text. That works
on every Claude model with tool use (including the configured default, claude-3-5-haiku), whereas the native
`output_config.format` is only accepted by newer models; a prefilled "{" would give no schema at all.
With other tools present the model must call some tool (tool_choice "any"): a real tool for another round of
the tool loop, or OUTPUT_TOOL for the final answer.

Temperature is not sent: SDK 2.x no longer has the parameter (the API sets sampling for current models).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
from anthropic.types import Message

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
from apps.platforms.errors import ErrorKind, PlatformError

logger = logging.getLogger(__name__)

PROVIDER = "anthropic"
OUTPUT_TOOL = "final_output"
# Anthropic requires max_tokens; used when the request leaves it open.
DEFAULT_MAX_TOKENS = 4096
STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    # A paused server-tool turn is unfinished output, like a truncation (we use no server tools).
    "pause_turn": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error types of an `event: error` inside a 200 stream, which has no HTTP status to go by.
STREAM_ERROR_KINDS: dict[str, tuple[ErrorKind, bool]] = {
    "overloaded_error": ("server_error", True),
    "api_error": ("server_error", True),
    "rate_limit_error": ("rate_limited", True),
    "invalid_request_error": ("bad_request", False),
    "authentication_error": ("auth", False),
    "permission_error": ("auth", False),
    "not_found_error": ("not_found", False),
}


class AnthropicPlatform(Platform):
    name = "anthropic"
    # SDK 2.x has no top_p (nor temperature), and the API has no seed or penalties.
    supported_options = frozenset({"stop", "user", "images", "tool_choice"})
    ignored_fields = frozenset({"temperature"})

    def __init__(
        self, *, api_key: str, base_url: str | None = None, default_model: str, timeout: float = 60.0
    ) -> None:
        self.default_model = default_model
        self.base_url = base_url or None
        self.timeout = timeout
        self._secret = api_key
        self._clients = _http.PerLoopClient(
            lambda: anthropic.AsyncAnthropic(
                api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=0
            ),
            lambda client: client.close(),
        )

    def info(self) -> PlatformInfo:
        return PlatformInfo(name=self.name, default_model=self.default_model, base_url=self.base_url)

    async def aclose(self) -> None:
        await self._clients.aclose()

    async def generate(self, request: CompletionRequest) -> Completion:
        params = self._params(request)
        try:
            # The SDK timeout bounds each network wait; this bounds the whole call, as the request promises.
            async with asyncio.timeout(request.timeout or self.timeout):
                message = await self._clients.get().messages.create(**params)
        except Exception as exc:
            raise self._error(exc) from None
        return self._completion(message, params["model"], wrapped=is_wrapped(request))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        # For a stream the timeout bounds connecting and each wait for the next event, not the whole stream;
        # the engine owns the overall deadline.
        params = self._params(request)
        try:
            sdk_stream = await self._clients.get().messages.create(**params, stream=True)
        except Exception as exc:
            raise self._error(exc) from None
        state = StreamState(model=params["model"], output_tool=OUTPUT_TOOL, wrapped=is_wrapped(request))
        try:
            async for event in sdk_stream:
                text = state.add(event)
                if text:
                    yield Chunk(text=text)
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            # On normal end, error, aclose() or cancellation alike: close the HTTP response so that the
            # provider stops generating for a consumer that went away.
            await sdk_stream.close()
            # Input tokens come with message_start and output as a running total: a stream cut short by a
            # timeout or cancel still reports what Anthropic counted so far.
            if request.on_usage is not None and (state.input_tokens or state.output_tokens):
                request.on_usage(state.usage())
        if not state.stopped or state.stop_reason is None:
            raise _http.incomplete_stream(
                PROVIDER, "no message_stop" if not state.stopped else "no stop_reason"
            )
        tool_calls = state.tool_calls()
        yield Chunk(
            finish_reason=finish_reason(state.stop_reason, tool_calls, state.answered_with_output_tool),
            usage=state.usage(),
            model=state.model,
            tool_calls=tool_calls,
            provider_id=state.provider_id,
        )

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.default_model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": to_anthropic_messages(request.messages),
        }
        system = "\n\n".join(
            [request.system_prompt, *(m.content for m in request.messages if m.role == "system")]
        ).strip()
        if system:
            params["system"] = system
        tools = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
            for t in request.tools
        ]
        if request.json_schema is not None:
            tools.append(
                {
                    "name": OUTPUT_TOOL,
                    "description": "Give your final answer by calling this tool; its input is the answer.",
                    "input_schema": output_schema(request.json_schema),
                }
            )
            forced = {"type": "tool", "name": OUTPUT_TOOL} if not request.tools else {"type": "any"}
            choice = request.tool_choice
            if choice is not None and choice.mode == "function":
                forced = {"type": "tool", "name": choice.name}
            elif choice is not None and choice.mode == "none":
                forced = {"type": "tool", "name": OUTPUT_TOOL}
            params["tool_choice"] = forced
        elif request.tools and request.tool_choice is not None:
            params["tool_choice"] = anthropic_tool_choice(request.tool_choice)
        if not tools and any(m.tool_calls for m in request.messages):
            # The API refuses tool_use / tool_result blocks in a request that defines no tools (a client's
            # follow-up may leave its tools out): declare the ones the history used, and allow no new call.
            names = dict.fromkeys(call.name for m in request.messages for call in m.tool_calls)
            tools = [{"name": name, "input_schema": {"type": "object"}} for name in names]
            params["tool_choice"] = {"type": "none"}
        if tools:
            params["tools"] = tools
        if request.sampling.stop:
            params["stop_sequences"] = list(request.sampling.stop)
        if request.sampling.user:
            params["metadata"] = {"user_id": request.sampling.user}
        if request.temperature is not None:
            logger.debug("temperature is not sent to anthropic (not a parameter of its current API)")
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    def _completion(self, message: object, model: str, *, wrapped: bool) -> Completion:
        if not isinstance(message, Message):
            raise _http.malformed(PROVIDER, f"expected a message, got {type(message).__name__}")
        try:
            texts: list[str] = []
            tool_calls: list[ToolCall] = []
            answered = False
            for block in message.content:
                if block.type == "text":
                    texts.append(block.text)
                elif block.type == "tool_use" and block.name == OUTPUT_TOOL:
                    texts.append(output_json(block.input, wrapped=wrapped))
                    answered = True
                elif block.type == "tool_use":
                    arguments = block.input if isinstance(block.input, Mapping) else None
                    if arguments is None:
                        raise _http.malformed(PROVIDER, f"input of tool call {block.name!r} is not an object")
                    tool_calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(arguments)))
            calls = tuple(tool_calls)
            return Completion(
                # The forced answer alone is the output: any text around it is the model thinking aloud.
                text=texts[-1] if answered else "".join(texts),
                finish_reason=finish_reason(message.stop_reason, calls, answered),
                usage=usage_of(message.usage),
                model=message.model or model,
                tool_calls=calls,
                provider_id=message.id,
            )
        except (AttributeError, TypeError) as exc:
            raise _http.malformed(PROVIDER, _http.describe(exc, self._secret)) from None

    def _error(self, exc: Exception) -> PlatformError:
        """Map anything the SDK (or the wire) raised onto a PlatformError; exhaustive by design."""
        secret = self._secret
        if isinstance(exc, PlatformError):
            return exc
        if isinstance(exc, anthropic.APITimeoutError | TimeoutError):
            return PlatformError(
                _http.describe(exc, secret), provider=PROVIDER, kind="timeout", retryable=True
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return PlatformError(
                _http.describe(exc, secret), provider=PROVIDER, kind="connection", retryable=True
            )
        if isinstance(exc, anthropic.APIStatusError):
            message = exc.api_message or exc.message
            if exc.status_code >= 400:
                return _http.status_error(
                    PROVIDER,
                    status=exc.status_code,
                    message=message,
                    headers=exc.response.headers,
                    secret=secret,
                )
            # An `event: error` in the middle of a 200 stream (e.g. overloaded): go by the error type.
            kind, retryable = STREAM_ERROR_KINDS.get(exc.type or "", ("server_error", True))
            return PlatformError(
                _http.scrub(f"{exc.type}: {message}", secret),
                provider=PROVIDER,
                kind=kind,
                retryable=retryable,
            )
        if isinstance(exc, anthropic.APIResponseValidationError):
            return _http.malformed(PROVIDER, exc.message, secret)
        if isinstance(exc, ValueError):  # the body or an SSE event was not JSON, or not the expected shape
            return _http.malformed(PROVIDER, _http.describe(exc, secret))
        # The SDK does not wrap network errors raised while reading a stream body: map them here.
        transport = _http.transport_error(PROVIDER, exc, secret)
        if transport is not None:
            return transport
        logger.warning("unexpected %s from the anthropic SDK", type(exc).__name__)
        return PlatformError(
            _http.describe(exc, secret), provider=PROVIDER, kind="server_error", retryable=False
        )


def finish_reason(stop_reason: str | None, tool_calls: tuple[ToolCall, ...], answered: bool) -> FinishReason:
    if stop_reason is None:
        raise _http.malformed(PROVIDER, "no stop_reason")
    if stop_reason == "tool_use" and answered and not tool_calls:
        return "stop"  # the forced output tool is how the answer arrives, not a call to run
    normalised = STOP_REASONS.get(stop_reason)
    if normalised is None:
        logger.warning("unknown stop_reason %r from anthropic, treated as stop", stop_reason)
        return "stop"
    return normalised


def anthropic_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "function":
        return {"type": "tool", "name": choice.name}
    return {"type": {"required": "any"}.get(choice.mode, choice.mode)}


def output_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's input must be an object: other schemas (an array, a string) are wrapped as {"value": ...}."""
    if schema.get("type") == "object":
        return dict(schema)
    return {"type": "object", "properties": {"value": dict(schema)}, "required": ["value"]}


def is_wrapped(request: CompletionRequest) -> bool:
    return request.json_schema is not None and request.json_schema.get("type") != "object"


def to_anthropic_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Anthropic wants alternating turns with tool results inside a user turn; consecutive user-side
    messages (tool results, then maybe more user text) are merged into one turn of content blocks."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue  # sent as `system`
        role = "assistant" if message.role == "assistant" else "user"
        blocks = content_blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def content_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.content}
        ]
    # The API rejects empty text blocks.
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    blocks.extend(
        {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}
        for image in message.images
    )
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.arguments)})
    return blocks


def output_json(value: object, *, wrapped: bool) -> str:
    """The answer given through OUTPUT_TOOL, as JSON text (unwrapped when the schema was wrapped)."""
    if wrapped and isinstance(value, Mapping):
        value = value.get("value")
    return json.dumps(value)


def usage_of(usage: Any) -> Usage:
    # Cache writes and reads are input too (Anthropic counts them apart); Usage has one input figure.
    cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0
    )
    return Usage((usage.input_tokens or 0) + cached, usage.output_tokens or 0)


@dataclass
class _Block:
    kind: str  # "text", "tool_use" or another block type we ignore (thinking, ...)
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


@dataclass
class StreamState:
    """What a stream has said so far. Input usage comes with message_start, output usage (a running total)
    with message_delta; tool input arrives as partial JSON and is parsed when its block stops."""

    model: str
    output_tool: str
    wrapped: bool
    provider_id: str | None = None
    stop_reason: str | None = None
    stopped: bool = False
    answered_with_output_tool: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    blocks: dict[int, _Block] = field(default_factory=dict)
    calls: list[ToolCall] = field(default_factory=list)

    def add(self, event: object) -> str:
        """Take one event in; return the text it adds (may be empty)."""
        try:
            return self._add(event)
        except (AttributeError, TypeError) as exc:
            raise _http.malformed(PROVIDER, _http.describe(exc, None)) from None

    def _add(self, event: Any) -> str:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.provider_id = event.message.id
            self.model = event.message.model or self.model
            usage = usage_of(event.message.usage)
            self.input_tokens, self.output_tokens = usage.input_tokens, usage.output_tokens
        elif kind == "content_block_start":
            block = event.content_block
            self.blocks[event.index] = _Block(
                block.type, getattr(block, "id", ""), getattr(block, "name", "")
            )
            return block.text if block.type == "text" else ""
        elif kind == "content_block_delta":
            return self._delta(event.index, event.delta)
        elif kind == "content_block_stop":
            return self._block_stop(self.blocks.get(event.index))
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.output_tokens = event.usage.output_tokens or self.output_tokens
            if getattr(event.usage, "input_tokens", None):  # newer API versions repeat the input total here
                self.input_tokens = usage_of(event.usage).input_tokens
        elif kind == "message_stop":
            self.stopped = True
        return ""

    def _delta(self, index: int, delta: Any) -> str:
        if delta.type == "text_delta":
            return delta.text
        block = self.blocks.get(index)
        if delta.type == "input_json_delta" and block is not None:
            block.parts.append(delta.partial_json)
            # The structured answer streams as it is written, unless it has to be unwrapped at the end.
            if block.name == self.output_tool and not self.wrapped:
                return delta.partial_json
        return ""

    def _block_stop(self, block: _Block | None) -> str:
        if block is None or block.kind != "tool_use":
            return ""
        arguments = _http.parse_arguments(PROVIDER, "".join(block.parts), tool=block.name)
        if block.name == self.output_tool:
            self.answered_with_output_tool = True
            return output_json(arguments, wrapped=True) if self.wrapped else ""
        self.calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
        return ""

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(self.calls)

    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)
