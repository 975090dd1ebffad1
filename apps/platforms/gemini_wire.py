"""Gemini on the wire: our request as google-genai's contents and config, and its responses (whole or
streamed) as our Completion and Chunk. Pure mapping over the SDK's types: no client, no network; the adapter
is gemini.py.

Gemini 3 wants each function call it made replayed with its thought signature: `Signatures` keeps the ones
this process received, by tool-call id, for the next turn's request.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from google.genai import types

from apps.platforms._http import incomplete_stream, malformed
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

PROVIDER = "gemini"
# Gemini often omits function-call ids; ours carry this prefix so they are never sent back as if Gemini's.
GENERATED_ID_PREFIX = "gemini-call-"
# Gemini 3 rejects a replayed function call without its thought signature. When we no longer hold the real one
# (another process, a history from another platform), this documented sentinel skips the validation.
SKIP_SIGNATURE = b"skip_thought_signature_validator"
MAX_SIGNATURES = 4096

FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    # A long-decode checkpoint: with automatic continuation off, the answer is cut short like MAX_TOKENS.
    "CONTINUATION": "length",
}
# Content-policy stops: a refusal, never retried.
REFUSAL = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# Our request was wrong (a replayed function call lacks its signature): retrying it unchanged cannot help.
BAD_REQUEST = frozenset({"MISSING_THOUGHT_SIGNATURE"})
# Everything else (MALFORMED_FUNCTION_CALL, MALFORMED_RESPONSE, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS,
# OTHER, unknown future values) is an unusable answer another sample may not repeat: malformed, retryable.


def seconds_to_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))  # HttpOptions.timeout is in milliseconds


class Signatures:
    """Thought signatures of the function calls we returned, by tool-call id (the most recent MAX_SIGNATURES),
    to replay them next turn."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, bytes] = OrderedDict()

    def get(self, call_id: str) -> bytes | None:
        return self._by_id.get(call_id)

    def remember(self, call_id: str, signature: bytes) -> None:
        self._by_id[call_id] = signature
        while len(self._by_id) > MAX_SIGNATURES:
            self._by_id.popitem(last=False)


# ---------------------------------------------------------------------- requests
def build_request(
    request: CompletionRequest, signatures: Signatures
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The `contents` and `config` of generate_content for `request`."""
    system, contents = contents_of(request.messages, signatures)
    system_text = "\n\n".join(part for part in (request.system_prompt, *system) if part)
    config = types.GenerateContentConfig(
        system_instruction=system_text or None,
        temperature=request.temperature,
        max_output_tokens=request.max_tokens,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
        stop_sequences=list(request.sampling.stop) or None,
        seed=request.sampling.seed,
        top_p=request.sampling.top_p,
        presence_penalty=request.sampling.presence_penalty,
        frequency_penalty=request.sampling.frequency_penalty,
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
        if request.tool_choice is not None:
            config.tool_config = gemini_tool_config(request.tool_choice)
    if request.timeout is not None:
        config.http_options = types.HttpOptions(timeout=seconds_to_ms(request.timeout))
    return contents, config


def contents_of(
    messages: Sequence[ChatMessage], signatures: Signatures
) -> tuple[list[str], list[types.Content]]:
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
        parts.extend(
            types.Part(inline_data=types.Blob(mime_type=image.media_type, data=base64.b64decode(image.data)))
            for image in message.images
        )
        for index, call in enumerate(message.tool_calls):
            tool_names[call.id] = call.name
            signature = signatures.get(call.id) or (SKIP_SIGNATURE if index == 0 else None)
            function_call = types.FunctionCall(
                id=_wire_id(call.id), name=call.name, args=dict(call.arguments)
            )
            parts.append(types.Part(function_call=function_call, thought_signature=signature))
        contents.append(types.Content(role="model" if message.role == "assistant" else "user", parts=parts))
    return system, contents


def gemini_tool_config(choice: ToolChoice) -> types.ToolConfig:
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}
    allowed = [choice.name] if choice.mode == "function" and choice.name else None
    return types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(
            mode=modes[choice.mode], allowed_function_names=allowed
        )
    )


def _wire_id(call_id: str | None) -> str | None:
    """The id to send back to Gemini: its own ids, never the ones we generated for it."""
    if not call_id or call_id.startswith(GENERATED_ID_PREFIX):
        return None
    return call_id


def _tool_output(content: str) -> dict[str, Any]:
    """A FunctionResponse.response object: a JSON object result as is, anything else under "output"."""
    try:
        value = json.loads(content)
    except ValueError:
        return {"output": content}
    return value if isinstance(value, dict) else {"output": value}


# ---------------------------------------------------------------------- responses
def completion_of(response: types.GenerateContentResponse, model: str, signatures: Signatures) -> Completion:
    raise_if_prompt_blocked(response)
    if not response.candidates:
        raise malformed(PROVIDER, "the response has no candidates")
    candidate = response.candidates[0]
    texts, calls = read_parts(candidate, signatures)
    text = "".join(texts)
    return Completion(
        text=text,
        finish_reason=finish_reason(candidate.finish_reason, has_text=bool(text), has_calls=bool(calls)),
        usage=usage_of(response.usage_metadata),
        model=response.model_version or model,
        tool_calls=tuple(calls),
        provider_id=response.response_id,
    )


def read_parts(candidate: types.Candidate, signatures: Signatures) -> tuple[list[str], list[ToolCall]]:
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
                signatures.remember(call_id, part.thought_signature)
    return texts, calls


class StreamState:
    """What a stream has said so far. Gemini sends function calls whole and running usage on every chunk, so
    the last usage seen is the total, and the finish reason arrives on the last chunk."""

    def __init__(self, signatures: Signatures, model: str) -> None:
        self.signatures = signatures
        self.model = model
        self.yielded = False
        self.has_text = False
        self.calls: list[ToolCall] = []
        self.finish_reason: Any = None
        self.usage: types.GenerateContentResponseUsageMetadata | None = None
        self.provider_id: str | None = None

    def observe(self, response: types.GenerateContentResponse) -> list[str]:
        raise_if_prompt_blocked(response)
        self.model = response.model_version or self.model
        self.provider_id = response.response_id or self.provider_id
        self.usage = response.usage_metadata or self.usage
        if not response.candidates:
            return []
        candidate = response.candidates[0]
        texts, calls = read_parts(candidate, self.signatures)
        self.calls.extend(calls)
        self.has_text = self.has_text or any(texts)
        if candidate.finish_reason is not None:
            self.finish_reason = candidate.finish_reason
        return [text for text in texts if text]

    def final(self) -> Chunk:
        if self.finish_reason is None:
            raise incomplete_stream(PROVIDER, "the stream closed without a finishReason")
        finish = finish_reason(self.finish_reason, has_text=self.has_text, has_calls=bool(self.calls))
        return Chunk(
            finish_reason=finish,
            usage=usage_of(self.usage),
            model=self.model,
            tool_calls=tuple(self.calls),
            provider_id=self.provider_id,
        )


def finish_reason(reason: Any, *, has_text: bool, has_calls: bool) -> FinishReason:
    value = str(getattr(reason, "value", reason) or "FINISH_REASON_UNSPECIFIED")
    if value in FINISH:
        return "tool_calls" if has_calls and value == "STOP" else FINISH[value]
    if value in REFUSAL:
        # Text already produced (and, in a stream, already shown) is kept: the answer ends as content_filter,
        # like OpenAI's finish reason. With nothing produced the model refused: an error, never retried.
        if has_text:
            return "content_filter"
        raise PlatformError(
            f"the model stopped for {value}", provider=PROVIDER, kind="refusal", retryable=False
        )
    if value in BAD_REQUEST:
        raise PlatformError(
            f"Gemini rejected the request ({value})", provider=PROVIDER, kind="bad_request", retryable=False
        )
    raise malformed(PROVIDER, f"the model stopped with {value}")


def raise_if_prompt_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = str(getattr(feedback.block_reason, "value", feedback.block_reason))
        raise PlatformError(
            f"the prompt was blocked ({reason})", provider=PROVIDER, kind="refusal", retryable=False
        )


def usage_of(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage:
    if meta is None:
        return Usage()
    # Thinking tokens are billed as output; tool-use prompt tokens (e.g. search results) as input.
    return Usage(
        input_tokens=(meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0),
        output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
    )
