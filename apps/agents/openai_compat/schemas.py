"""`POST /v1/chat/completions` request body -> a validated `ChatRequest`, and what it becomes for the engine.

Shapes and types are checked by the pydantic models of wire.py; this module maps the conversation onto an
agent run:
- `model` is an agent slug; the agent's system prompt, platform, model and settings apply.
- The conversation ends with the user's message (the run's task) or with the results of the client's own
  tools (the run continues from them). The user and assistant text turns before the task are
  `context.conversation_history`, recorded on the execution.
- `system` (and `developer`) messages are *appended* to the agent's own system prompt, in order, wherever they
  appear: the agent's instructions stay first and the client can add to them, not replace them.
- `temperature` (0..2) and `max_tokens` / `max_completion_tokens` (1..200000) override the agent's own for
  this request only; `stop`, `seed`, `top_p`, the penalties and `user` go to the platform that supports them
  (refused with a 400 naming the parameter where it does not: see views.check_platform_support).
- `response_format`: `json_object` asks for any JSON object, `json_schema` for JSON matching the schema
  (validated and re-asked like an agent's output_schema, which it replaces for this request).
- `tools` / `tool_choice`: the client's own function tools, offered beside the agent's; `tool` messages carry
  their results back. Image parts must be `data:` URLs (the server never fetches a URL a client gives).
- `logprobs` / `top_logprobs`: returned on non-streamed completions from platforms that give them (OpenAI).
- Refused with a 400: `n` > 1, the deprecated `functions` / `function` messages.

Pure Python: no ORM, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from apps.agents.engine.request_options import RequestOptions
from apps.agents.openai_compat import wire
from apps.agents.openai_compat.errors import OpenAIError, invalid
from apps.agents.openai_compat.schema_check import check_request_schema
from apps.platforms.base import ChatMessage, ImagePart, Sampling, ToolCall, ToolChoice, ToolDefinition

MAX_TOKENS_LIMIT = wire.MAX_TOKENS_LIMIT
_HISTORY_FIELD = re.compile(r"^context\.conversation_history\[(\d+)\](.*)$")
_DATA_URL = re.compile(r"^data:(image/(?:png|jpeg|gif|webp));base64,([A-Za-z0-9+/=\s]+)$", re.DOTALL)
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    task: str
    #: The user / assistant text turns before the task, as the engine records them: {"role", "content"}.
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
    sampling: Sampling = field(default_factory=Sampling)
    #: response_format json_schema: the schema, whether strict, its name.
    response_schema: dict[str, Any] | None = None
    schema_strict: bool = False
    client_tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    #: The whole conversation for the model, when plain text turns cannot carry it (tool turns, images).
    messages: tuple[ChatMessage, ...] | None = None
    #: Whether each option came from the client, for the 400 that names it (e.g. "images" -> the part).
    option_params: Mapping[str, str] = field(default_factory=dict)

    def input_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"task": self.task}
        if self.json_output:
            data["output_format"] = "json"
        return data

    def options(self) -> RequestOptions | None:
        if (
            not self.sampling.used()
            and self.response_schema is None
            and not self.client_tools
            and self.tool_choice is None
            and self.messages is None
        ):
            return None
        return RequestOptions(
            sampling=self.sampling,
            tool_choice=self.tool_choice,
            client_tools=self.client_tools,
            json_schema=self.response_schema,
            json_schema_strict=self.schema_strict,
            messages=self.messages,
        )

    def overrides(self) -> dict[str, Any]:
        """What this request changed about the agent; recorded on the execution (context.metadata)."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "system": self.system or None,
            **{name: getattr(self.sampling, name) for name in self.sampling.used()},
            "response_schema": self.response_schema,
            "tools": [tool.name for tool in self.client_tools] or None,
            "tool_choice": _choice_record(self.tool_choice),
        }
        if isinstance(values.get("stop"), tuple):
            values["stop"] = list(values["stop"])
        return {key: value for key, value in values.items() if value is not None}

    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {}
        overrides = self.overrides()
        if self.history and self.messages is None:
            context["conversation_history"] = [dict(turn) for turn in self.history]
        elif self.history:
            # The model gets the whole conversation through the run's options (tool turns, images); the
            # text turns are recorded for the reader of the execution.
            overrides["history"] = [dict(turn) for turn in self.history]
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


def _choice_record(choice: ToolChoice | None) -> Any:
    if choice is None:
        return None
    return {"function": choice.name} if choice.mode == "function" else choice.mode


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") for part in content)


def _image(url: str, param: str) -> ImagePart:
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid(
            "images must be sent inline as a data: URL (data:image/png;base64,...): the server never "
            "fetches a URL given by a client",
            param=param,
            code="invalid_image_url",
        )
    data = re.sub(r"\s+", "", match.group(2))
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("the image is not valid base64", param=param, code="invalid_image_url") from None
    return ImagePart(media_type=match.group(1), data=data)


def _user_message(message: wire.UserMessage, index: int) -> ChatMessage:
    if isinstance(message.content, str):
        return ChatMessage(role="user", content=message.content)
    texts: list[str] = []
    images: list[ImagePart] = []
    for part_index, part in enumerate(message.content):
        if isinstance(part, wire.ImagePartBody):
            where = f"messages[{index}].content[{part_index}].image_url.url"
            images.append(_image(part.image_url.url, where))
        else:
            texts.append(part.text)
    return ChatMessage(role="user", content="".join(texts), images=tuple(images))


def _arguments(call: wire.ToolCallBody, param: str) -> dict[str, Any]:
    try:
        value = json.loads(call.function.arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid("must be a JSON object, as text", param=param)
    return value


def _assistant_message(message: wire.AssistantMessage, index: int) -> ChatMessage:
    calls = tuple(
        ToolCall(
            id=call.id,
            name=call.function.name,
            arguments=_arguments(call, f"messages[{index}].tool_calls[{call_index}].function.arguments"),
        )
        for call_index, call in enumerate(message.tool_calls or ())
    )
    return ChatMessage(role="assistant", content=_text(message.content), tool_calls=calls)


@dataclass(slots=True)
class _Conversation:
    messages: list[ChatMessage] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    call_names: dict[str, str] = field(default_factory=dict)
    images_at: str | None = None

    def add(self, message: wire.Message, index: int) -> None:
        if isinstance(message, wire.FunctionMessage):
            raise invalid(
                "`function` messages are deprecated: send tool results as `tool` messages",
                param=f"messages[{index}].role",
                code="unsupported_value",
            )
        if isinstance(message, wire.SystemMessage):
            text = _text(message.content)
            if text.strip():
                self.system.append(text)
            return
        if isinstance(message, wire.UserMessage):
            converted = _user_message(message, index)
            if converted.images and self.images_at is None:
                self.images_at = f"messages[{index}].content"
        elif isinstance(message, wire.AssistantMessage):
            converted = _assistant_message(message, index)
            self.call_names.update((call.id, call.name) for call in converted.tool_calls)
        else:
            name = self.call_names.get(message.tool_call_id)
            if name is None:
                raise invalid(
                    "answers no tool call of an earlier assistant message",
                    param=f"messages[{index}].tool_call_id",
                )
            converted = ChatMessage(
                role="tool", content=_text(message.content), tool_call_id=message.tool_call_id, name=name
            )
        self.messages.append(converted)
        self.positions.append(index)


def _conversation(
    body: wire.ChatCompletionBody, max_messages: int, prior_calls: Mapping[str, str]
) -> _Conversation:
    if len(body.messages) > max_messages:
        raise invalid(f"at most {max_messages} messages", param="messages")
    conversation = _Conversation(call_names=dict(prior_calls))
    for index, message in enumerate(body.messages):
        conversation.add(message, index)
    last = conversation.messages[-1] if conversation.messages else None
    if last is None or last.role not in ("user", "tool"):
        raise invalid(
            "the last message (other than system ones) must be the user's, or the results of your tools",
            param="messages",
        )
    return conversation


def _tools(body: wire.ChatCompletionBody) -> tuple[tuple[ToolDefinition, ...], ToolChoice | None]:
    tools = tuple(
        ToolDefinition(
            name=tool.function.name,
            description=tool.function.description or "",
            parameters=tool.function.parameters or NO_PARAMETERS,
        )
        for tool in body.tools or ()
    )
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise invalid("tool names must be unique", param="tools")
    for index, tool in enumerate(tools):
        check_request_schema(tool.parameters, param=f"tools[{index}].function.parameters")
    choice = body.tool_choice
    if choice is None:
        return tools, None
    if not tools:
        raise invalid("`tool_choice` needs `tools`", param="tool_choice")
    if isinstance(choice, wire.NamedToolChoice):
        if choice.function.name not in names:
            raise invalid(f"no tool named {choice.function.name!r} in `tools`", param="tool_choice")
        return tools, ToolChoice("function", choice.function.name)
    return tools, ToolChoice(choice)


def _sampling(body: wire.ChatCompletionBody) -> Sampling:
    stop = body.stop
    return Sampling(
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=body.seed,
        top_p=body.top_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        user=body.user or body.safety_identifier,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs,
    )


def _refuse_unsupported(body: wire.ChatCompletionBody) -> None:
    if body.top_logprobs is not None and not body.logprobs:
        raise invalid("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    if body.logprobs and body.stream:
        raise invalid(
            "log probabilities are returned on non-streamed completions only",
            param="logprobs",
            code="unsupported_parameter",
        )
    if body.stream_options is not None and not body.stream:
        raise invalid("`stream_options` is only allowed with stream: true", param="stream_options")


#: input_data.task of a run that continues a stored conversation from tool results alone.
CONTINUATION_TASK = "(continue from the tool results)"


def parse_chat_request(
    body: Any,
    *,
    max_messages: int,
    max_chars: int,
    prior_calls: Mapping[str, str] | None = None,
    continuing: bool = False,
) -> ChatRequest:
    """Validate a chat completion request. Raises OpenAIError (400) naming the offending parameter.

    `continuing`: the messages follow a stored conversation (the Responses API's previous_response_id),
    whose tool calls by id are `prior_calls`; they always go to the model as the run's new turns."""
    parsed: wire.ChatCompletionBody = wire.validate_body(wire.ChatCompletionBody, body)
    _refuse_unsupported(parsed)
    conversation = _conversation(parsed, max_messages, prior_calls or {})
    system = "\n\n".join(conversation.system)
    if len(system) > max_chars:
        raise invalid(f"system messages longer than {max_chars} characters in all", param="messages")
    tools, choice = _tools(parsed)
    messages, positions = conversation.messages, conversation.positions
    user_indices = [i for i, message in enumerate(messages) if message.role == "user"]
    if not user_indices and not continuing:
        raise invalid("the conversation needs a user message", param="messages")
    task_at = user_indices[-1] if user_indices else 0
    history = tuple(
        {"role": message.role, "content": message.content}
        for message in messages[:task_at]
        if message.role in ("user", "assistant")
    )
    history_positions = tuple(
        positions[i] for i, message in enumerate(messages[:task_at]) if message.role in ("user", "assistant")
    )
    plain = not continuing and all(not m.images and not m.tool_calls and m.role != "tool" for m in messages)
    schema, strict = None, False
    response_format = parsed.response_format
    if isinstance(response_format, wire.JSONSchemaFormat):
        spec = response_format.json_schema
        schema = check_request_schema(
            spec.schema_ or {"type": "object"}, param="response_format.json_schema.schema"
        )
        strict = bool(spec.strict)
    option_params = {"images": conversation.images_at or "messages", "tool_choice": "tool_choice"}
    stream = bool(parsed.stream)
    return ChatRequest(
        model=parsed.model,
        task=messages[task_at].content if user_indices else CONTINUATION_TASK,
        history=history,
        system=system,
        temperature=parsed.temperature,
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens,
        stream=stream,
        include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
        json_output=isinstance(response_format, wire.JSONObjectFormat),
        positions=(*history_positions, positions[task_at]),
        sampling=_sampling(parsed),
        response_schema=schema,
        schema_strict=strict,
        client_tools=tools,
        tool_choice=choice,
        messages=None if plain else tuple(messages),
        option_params=option_params,
    )


__all__ = ["ChatRequest", "OpenAIError", "parse_chat_request"]
