"""Shape checks of a run's input_data and context, before anything is written or sent anywhere.

Pure Python: raises InvalidInput naming the field (e.g. "input_data.task",
"context.conversation_history[2].role"); the service layer turns it into a 400 ApplicationError. Values
must be plain JSON (PostgreSQL's jsonb also rejects the NUL character, so it is refused here rather than
failing the INSERT with a 500).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CONTEXT_KEYS = frozenset({"conversation_history", "conversation_id", "conversation_summary", "metadata"})
HISTORY_ROLES = frozenset({"user", "assistant"})
MAX_OUTPUT_FORMAT_CHARS = 50
MAX_DEPTH = 20


class InvalidInput(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def check_json(value: Any, where: str, depth: int = 0) -> None:
    """Plain JSON only: dicts with string keys, lists, strings without NUL, finite numbers, bools, null."""
    if depth > MAX_DEPTH:
        raise InvalidInput(where, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(where, "must be a finite number")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(where, "must not contain NUL characters")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(where, "object keys must be strings")
            check_json(key, where, depth + 1)
            check_json(item, f"{where}.{key}", depth + 1)
        return
    raise InvalidInput(where, f"unsupported type {type(value).__name__}")


def _text(value: Any, field: str, *, max_chars: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if required and not value.strip():
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(field, f"longer than {max_chars} characters")
    return value


def validate_input(input_data: Any, *, max_chars: int) -> dict[str, Any]:
    """input_data needs a non-empty string `task` (or `message`); `output_format` is an optional short string;
    any other JSON fields are passed to the prompt as labelled context."""
    if not isinstance(input_data, Mapping):
        raise InvalidInput("input_data", "must be an object")
    data = dict(input_data)
    key = "message" if "task" not in data and "message" in data else "task"
    if key not in data:
        raise InvalidInput("input_data.task", "is required")
    _text(data[key], f"input_data.{key}", max_chars=max_chars, required=True)
    if data.get("output_format") is not None:
        _text(data["output_format"], "input_data.output_format", max_chars=MAX_OUTPUT_FORMAT_CHARS)
    check_json(data, "input_data")
    return data


def validate_context(context: Any, *, max_messages: int, max_chars: int) -> dict[str, Any]:
    """The seed's context: conversation_history [{role: user|assistant, content}], conversation_id,
    conversation_summary, metadata (a free JSON object). Unknown keys are refused, not silently dropped."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise InvalidInput("context", "must be an object")
    ctx = {key: value for key, value in context.items() if value is not None}
    for key in ctx:
        if key not in CONTEXT_KEYS:
            raise InvalidInput(
                f"context.{key}", f"unknown field (allowed: {', '.join(sorted(CONTEXT_KEYS))})"
            )
    history = ctx.get("conversation_history", [])
    if not isinstance(history, list):
        raise InvalidInput("context.conversation_history", "must be a list")
    if len(history) > max_messages:
        raise InvalidInput("context.conversation_history", f"more than {max_messages} messages")
    for index, item in enumerate(history):
        where = f"context.conversation_history[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(where, 'must be an object {"role", "content"}')
        if item.get("role") not in HISTORY_ROLES:
            raise InvalidInput(f"{where}.role", "must be 'user' or 'assistant'")
        _text(item.get("content"), f"{where}.content", max_chars=max_chars)
        extra = set(item) - {"role", "content"}
        if extra:
            raise InvalidInput(f"{where}.{sorted(extra)[0]}", "unknown field")
    if history:
        ctx["conversation_history"] = [{"role": m["role"], "content": m["content"]} for m in history]
    if "conversation_id" in ctx:
        if not isinstance(ctx["conversation_id"], str):
            ctx["conversation_id"] = str(ctx["conversation_id"])
        if history:
            raise InvalidInput("context.conversation_history", "cannot be combined with conversation_id")
    if "conversation_summary" in ctx:
        _text(ctx["conversation_summary"], "context.conversation_summary", max_chars=max_chars)
    if "metadata" in ctx and not isinstance(ctx["metadata"], Mapping):
        raise InvalidInput("context.metadata", "must be an object")
    check_json(ctx, "context")
    return ctx
