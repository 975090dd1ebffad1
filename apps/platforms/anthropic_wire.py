"""The Anthropic Messages API on the wire: our request as the SDK's parameters (structured output as the
forced OUTPUT_TOOL, see anthropic.py), and its messages and stream events as our Completion and Chunk. Pure
mapping: no client, no network."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anthropic.types import Message

from apps.platforms import _http
from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    ToolCall,
    ToolChoice,
    Usage,
)

# The adapter's logger: a log line names the platform, whichever of its modules wrote it.
logger = logging.getLogger("apps.platforms.anthropic")

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


# ---------------------------------------------------------------------- requests
def request_params(request: CompletionRequest, *, default_model: str) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for `request`."""
    params: dict[str, Any] = {
        "model": request.model or default_model,
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


# ---------------------------------------------------------------------- whole answers
def completion_of(message: object, model: str, *, wrapped: bool, secret: str | None) -> Completion:
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
        raise _http.malformed(PROVIDER, _http.describe(exc, secret)) from None


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


def usage_of(usage: Any) -> Usage:
    # Cache writes and reads are input too (Anthropic counts them apart); Usage has one input figure.
    cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0
    )
    return Usage((usage.input_tokens or 0) + cached, usage.output_tokens or 0)


# ---------------------------------------------------------------------- streams
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

    def reported_usage(self) -> Usage | None:
        # Input tokens come with message_start and output as a running total: a stream cut short by a
        # timeout or cancel still reports what Anthropic counted so far.
        return self.usage() if self.input_tokens or self.output_tokens else None

    def final_chunk(self) -> Chunk:
        """The last chunk of a stream that ended; PlatformError for one that ended before its stop."""
        if not self.stopped or self.stop_reason is None:
            raise _http.incomplete_stream(
                PROVIDER, "no message_stop" if not self.stopped else "no stop_reason"
            )
        tool_calls = self.tool_calls()
        return Chunk(
            finish_reason=finish_reason(self.stop_reason, tool_calls, self.answered_with_output_tool),
            usage=self.usage(),
            model=self.model,
            tool_calls=tool_calls,
            provider_id=self.provider_id,
        )
