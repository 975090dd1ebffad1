"""Tool calls on the local model: a grammar over the offered tools' argument schemas.

A small GGUF model has no native tool-calling format we could rely on, so the model is told about the tools
in its system prompt and its answer is constrained to one JSON object, either

    {"tool": "<one of the offered names>", "arguments": {... that tool's parameters ...}}
    {"answer": <the final answer: a string, or the requested JSON schema's value>}

The grammar guarantees the shape and the tool name; the engine still validates the arguments against the
tool's schema before running it (tools.py), as it does for every platform.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from apps.platforms.base import ToolCall, ToolChoice, ToolDefinition
from apps.platforms.errors import PlatformError

PROVIDER = "local"
#: The final text answer's length cap in the grammar (the token budget of a tool turn).
ANSWER_CHARS = 400


def offered_tools(
    tools: Sequence[ToolDefinition], choice: ToolChoice | None
) -> tuple[tuple[ToolDefinition, ...], bool]:
    """The tools the grammar offers under the request's tool_choice, and whether a call is required (the
    final-answer shape is then left out): "none" offers none, "required" all of them, a name only that
    one, "auto" (or no choice) all of them beside the answer."""
    if choice is None or choice.mode == "auto":
        return tuple(tools), False
    if choice.mode == "none":
        return (), False
    if choice.mode == "function":
        return tuple(t for t in tools if t.name == choice.name), True
    return tuple(tools), True


def tools_schema(
    tools: Sequence[ToolDefinition], json_schema: Mapping[str, Any] | None, *, answer: bool = True
) -> dict[str, Any]:
    calls = [
        {
            "type": "object",
            "properties": {"tool": {"const": tool.name}, "arguments": _arguments_schema(tool.parameters)},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    value = dict(json_schema) if json_schema is not None else {"type": "string", "maxLength": ANSWER_CHARS}
    final = {
        "type": "object",
        "properties": {"answer": value},
        "required": ["answer"],
        "additionalProperties": False,
    }
    return {"anyOf": [*calls, final] if answer else calls}


def _arguments_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    schema = dict(parameters) if parameters else {}
    if schema.get("type") == "object" and "properties" not in schema:
        # `{"type": "object"}` alone means any object; the converter needs the properties key to emit `{}`.
        schema["properties"] = {}
    return schema or {"type": "object", "properties": {}}


def tools_instructions(tools: Sequence[ToolDefinition], must_call: bool = False) -> str:
    call = 'To call one, answer with only {"tool": "<name>", "arguments": {...}}.'
    lines = [
        f"You must call one of these tools. {call} Tools:"
        if must_call
        else f'You can call tools. {call} When you have the final answer, answer with only {{"answer": ...}}. '
        "Tools:"
    ]
    for tool in tools:
        lines.append(
            f"- {tool.name}: {tool.description} Arguments (JSON Schema): {json.dumps(tool.parameters)}"
        )
    return "\n".join(lines)


def parse_tool_answer(text: str, json_schema: Mapping[str, Any] | None) -> tuple[str, tuple[ToolCall, ...]]:
    """(answer text, tool calls) from a tool-mode answer; PlatformError if it is not one (a cut-short
    generation: the grammar admits nothing else)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise PlatformError(
            f"the local model's tool-mode answer is not complete JSON: {text[:80]!r}",
            provider=PROVIDER,
            kind="malformed_response",
            retryable=False,
        ) from None
    if isinstance(value, dict) and "tool" in value:
        arguments = value.get("arguments")
        call = ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=str(value["tool"]),
            arguments=arguments if isinstance(arguments, dict) else {},
        )
        return "", (call,)
    if isinstance(value, dict) and "answer" in value:
        answer = value["answer"]
        if json_schema is None and isinstance(answer, str):
            return answer, ()
        return json.dumps(answer, ensure_ascii=False), ()
    raise PlatformError(
        "the local model's tool-mode answer is neither a tool call nor an answer",
        provider=PROVIDER,
        kind="malformed_response",
        retryable=False,
    )
