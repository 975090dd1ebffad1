"""`POST /v1/chat/completions` request body -> a validated `ChatRequest`, and what it becomes for the engine.

How an OpenAI conversation maps onto an agent run:
- `model` is an agent slug; the agent's system prompt, platform, model and settings apply.
- The last message must be the user's: it is the run's task. The user and assistant messages before it are
  `context.conversation_history`, recorded on the execution. Conversational agents answer from it; the
  engine's TaskAgent currently answers the task alone (see the xfail test in
  tests/agents/openai_compat/test_chat_completions.py).
- `system` (and `developer`) messages are *appended* to the agent's own system prompt, in order, wherever they
  appear: the agent's instructions stay first and the client can add to them, not replace them.
- `temperature` (0..2) and `max_tokens` / `max_completion_tokens` (1..200000) override the agent's own for
  this request only.
- `response_format: {"type": "json_object"}` asks for a JSON answer (the engine's `output_format: "json"`).
- What an agent run cannot honour is refused with a 400 rather than silently ignored: `n` > 1, client-side
  `tools` / `functions`, `tool` messages, `json_schema` response formats, non-text content parts. Other
  OpenAI parameters (top_p, stop, seed, user, ...) are accepted and ignored, as most OpenAI-compatible servers
  do, so that generic clients work unchanged.

Pure Python: no ORM, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apps.agents.openai_compat.errors import OpenAIError, invalid

MAX_TOKENS_LIMIT = 200_000  # Agent.max_tokens' own validator
CONVERSATION_ROLES = frozenset({"user", "assistant"})
SYSTEM_ROLES = frozenset({"system", "developer"})
_HISTORY_FIELD = re.compile(r"^context\.conversation_history\[(\d+)\](.*)$")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    task: str
    #: The user / assistant turns before the task, as the engine takes them: {"role", "content"}.
    history: tuple[dict[str, str], ...]
    #: The client's system and developer messages, joined; appended to the agent's system prompt.
    system: str
    temperature: float | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    json_output: bool
    #: Index in the request's `messages` of each history turn, then of the task (for error `param`s).
    positions: tuple[int, ...]

    def input_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"task": self.task}
        if self.json_output:
            data["output_format"] = "json"
        return data

    def overrides(self) -> dict[str, Any]:
        """What this request changed about the agent; recorded on the execution (context.metadata)."""
        values = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "system": self.system or None,
        }
        return {key: value for key, value in values.items() if value is not None}

    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {}
        if self.history:
            context["conversation_history"] = [dict(turn) for turn in self.history]
        overrides = self.overrides()
        if overrides:
            context["metadata"] = {"openai_compat": overrides}
        return context

    def param_for(self, field: str) -> str:
        """The part of the client's request that an engine error about `field` is about."""
        if field.startswith(("input_data.task", "input_data.message")):
            return f"messages[{self.positions[-1]}].content"
        if field.startswith("input_data.output_format"):
            return "response_format"
        match = _HISTORY_FIELD.match(field)
        if match is not None and int(match.group(1)) < len(self.positions) - 1:
            return f"messages[{self.positions[int(match.group(1))]}]{match.group(2)}"
        return "messages"


def _clean_text(value: str, param: str) -> str:
    # PostgreSQL stores neither NUL nor lone surrogates (which json.loads happily produces from "\ud800"):
    # refuse them here, as a 400 naming the field, instead of failing the INSERT with a 500.
    if "\x00" in value:
        raise invalid("must not contain NUL characters", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("must be valid Unicode (no lone surrogates)", param=param) from None
    return value


def _content(message: Mapping[str, Any], index: int, role: str) -> str:
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        if role == "assistant":
            return ""
        raise invalid(f"a {role} message needs content", param=param, code="missing_required_parameter")
    if isinstance(content, str):
        return _clean_text(content, param)
    if not isinstance(content, list):
        raise invalid("must be a string or a list of text parts", param=param, code="invalid_type")
    texts = []
    for part_index, part in enumerate(content):
        where = f"{param}[{part_index}]"
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "input_text"):
            raise invalid(
                "only text content parts are supported by agents", param=where, code="unsupported_value"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid("a text part needs a string `text`", param=f"{where}.text", code="invalid_type")
        texts.append(_clean_text(text, f"{where}.text"))
    return "".join(texts)


def _messages(raw: Any, *, max_messages: int) -> tuple[str, tuple[dict[str, str], ...], str, tuple[int, ...]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("`messages` must be a non-empty list", param="messages", code="invalid_type")
    if len(raw) > max_messages:
        raise invalid(f"at most {max_messages} messages", param="messages")
    turns: list[tuple[int, dict[str, str]]] = []
    system: list[str] = []
    for index, message in enumerate(raw):
        if not isinstance(message, Mapping):
            raise invalid("each message must be an object", param=f"messages[{index}]", code="invalid_type")
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise invalid(
                "client-side tool calls are not supported: an agent runs its own tools",
                param=f"messages[{index}]",
                code="unsupported_value",
            )
        if role in SYSTEM_ROLES:
            text = _content(message, index, role)
            if text.strip():
                system.append(text)
        elif role in CONVERSATION_ROLES:
            turns.append((index, {"role": role, "content": _content(message, index, role)}))
        else:
            raise invalid(
                "role must be one of system, developer, user, assistant", param=f"messages[{index}].role"
            )
    if not turns or turns[-1][1]["role"] != "user":
        raise invalid("the last message (other than system ones) must be the user's", param="messages")
    *history, (task_index, task) = turns
    positions = (*(index for index, _ in history), task_index)
    return task["content"], tuple(turn for _, turn in history), "\n\n".join(system), positions


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"`{name}` must be a number", param=name, code="invalid_type")
    if not low <= value <= high:
        raise invalid(f"`{name}` must be between {low:g} and {high:g}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"`{name}` must be an integer", param=name, code="invalid_type")
    if not low <= value <= high:
        raise invalid(f"`{name}` must be between {low} and {high}", param=name)
    return value


def _flag(body: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"`{param or name}` must be a boolean", param=param or name, code="invalid_type")
    return value


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise invalid("only n=1 is supported", param="n", code="unsupported_value")
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(
                f"`{name}` is not supported: an agent runs its own tools",
                param=name,
                code="unsupported_parameter",
            )


def _json_output(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    if response_format is None:
        return False
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return False
    if kind == "json_object":
        return True
    raise invalid(
        'response_format must be {"type": "text"} or {"type": "json_object"} (an agent\'s own output '
        "schema decides structured output)",
        param="response_format",
        code="unsupported_value",
    )


def parse_chat_request(body: Any, *, max_messages: int, max_chars: int) -> ChatRequest:
    """Validate a chat completion request. Raises OpenAIError (400) naming the offending parameter."""
    if not isinstance(body, Mapping):
        raise invalid("the request body must be a JSON object", code="invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` (an agent slug) is required", param="model", code="missing_required_parameter")
    _refuse_unsupported(body)
    task, history, system, positions = _messages(body.get("messages"), max_messages=max_messages)
    if len(system) > max_chars:
        raise invalid(f"system messages longer than {max_chars} characters in all", param="messages")
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise invalid("`stream_options` is only allowed with stream: true", param="stream_options")
        if not isinstance(stream_options, Mapping):
            raise invalid("`stream_options` must be an object", param="stream_options", code="invalid_type")
    include_usage = _flag(stream_options or {}, "include_usage", "stream_options.include_usage")
    max_tokens = _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    return ChatRequest(
        model=model,
        task=task,
        history=history,
        system=system,
        temperature=_number(body, "temperature", 0.0, 2.0),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        json_output=_json_output(body),
        positions=positions,
    )


__all__ = ["ChatRequest", "OpenAIError", "parse_chat_request"]
