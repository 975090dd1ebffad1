"""OpenAI Chat Completions on the wire: our request as the SDK's parameters, and its answers (whole or
streamed) as our Completion and Chunk. Pure mapping: no client, no network; the adapter is openai.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

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
from apps.platforms.errors import PlatformError

# The adapter's logger: a log line names the platform, whichever of its modules wrote it.
logger = logging.getLogger("apps.platforms.openai")

PROVIDER = "openai"
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated single-function form
    "content_filter": "content_filter",
}


# ---------------------------------------------------------------------- requests
def request_params(
    request: CompletionRequest, *, default_model: str, max_tokens_field: str
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for `request`."""
    params: dict[str, Any] = {
        "model": request.model or default_model,
        "messages": request.with_system_message(to_openai_message),
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        params[max_tokens_field] = request.max_tokens
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


def openai_tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


# ---------------------------------------------------------------------- whole answers
def completion_of(body: object, model: str, secret: str | None) -> Completion:
    """A whole answer (a `chat.completion` payload as parsed JSON) as a Completion."""
    if not isinstance(body, dict):
        raise _http.malformed(PROVIDER, f"expected a chat.completion, got {type(body).__name__}")
    try:
        choice = body["choices"][0]
        message = choice["message"]
        if message.get("refusal"):
            raise refusal(_text(message["refusal"]), secret)
        tool_calls = tuple(
            ToolCall(
                id=_text(call.get("id")),
                name=_text(call["function"]["name"]),
                arguments=_http.parse_arguments(
                    PROVIDER, _text(call["function"].get("arguments")), tool=call["function"]["name"]
                ),
            )
            for call in message.get("tool_calls") or ()
            if call.get("type") == "function"
        )
        usage = body.get("usage")
        return Completion(
            text=_text(message.get("content")),
            finish_reason=normalise_finish(choice.get("finish_reason"), bool(tool_calls)),
            usage=Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            if usage
            else Usage(),
            model=body.get("model") or model,
            tool_calls=tool_calls,
            provider_id=body.get("id"),
            logprobs=_logprobs(choice),
        )
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise _http.malformed(PROVIDER, _http.describe(exc, secret)) from None


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


def _logprobs(choice: dict[str, Any]) -> tuple[dict[str, Any], ...] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return tuple(dict(item) for item in content)


# ---------------------------------------------------------------------- streams
def _text(value: object) -> str:
    """A streamed string field: None is empty; anything else not a string is a malformed chunk (the SDK's
    models did not check types either, so this is where a number in `content` is caught)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamState:
    """What a stream has said so far; tool calls arrive as deltas keyed by index and are assembled here."""

    model: str
    provider_id: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _PendingCall] = field(default_factory=dict)

    def add(self, event: object) -> str:
        """Take one chunk in (a `chat.completion.chunk` payload as parsed JSON); return its text (may be
        empty)."""
        if not isinstance(event, dict):
            raise _http.malformed(PROVIDER, f"expected a chat.completion.chunk, got {type(event).__name__}")
        try:
            self.provider_id = event.get("id") or self.provider_id
            self.model = event.get("model") or self.model
            usage = event.get("usage")
            if usage is not None:
                self.usage = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            text = ""
            for choice in event.get("choices") or ():
                if choice.get("index") not in (0, None):
                    continue  # we never ask for n > 1
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                delta = choice.get("delta")
                if delta is None:
                    continue
                text += _text(delta.get("content"))
                if delta.get("refusal"):
                    self.refusal.append(_text(delta["refusal"]))
                for call in delta.get("tool_calls") or ():
                    self._add_call(call.get("index"), call.get("id"), call.get("function"))
            return text
        except (AttributeError, TypeError) as exc:
            raise _http.malformed(PROVIDER, _http.describe(exc, None)) from None

    def _add_call(self, index: int | None, call_id: str | None, function: Any) -> None:
        if index is None:  # some compatible servers send whole calls without an index
            index = len(self.calls) if call_id or not self.calls else max(self.calls)
        pending = self.calls.setdefault(index, _PendingCall())
        pending.id = call_id or pending.id
        if function is not None:
            pending.name = function.get("name") or pending.name
            pending.arguments.append(_text(function.get("arguments")))

    def reported_usage(self) -> Usage | None:
        # OpenAI sends usage in the last chunk only: a stream cut short has none.
        return self.usage

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
