"""`POST /v1/responses` request body: validated (pydantic, wire.py's conventions), then translated into the
equivalent Chat Completions body, so that one mapping (schemas.py) decides how any OpenAI request becomes an
agent run.

    instructions                      -> a system message (appended to the agent's prompt)
    input: "text"                     -> one user message
    input items: message              -> a message of that role (input_text / input_image / output_text parts)
                 function_call        -> an assistant message with that tool call
                 function_call_output -> a tool message
    tools [{type: function, name...}] -> tools [{type: function, function: {...}}]
    tool_choice {type: function, name}-> {type: function, function: {name}}
    text.format json_schema / json_object -> response_format
    max_output_tokens                 -> max_completion_tokens
    previous_response_id              -> the stored Conversation of that response (views.py)

Refused with a 400 naming the parameter: built-in tools (web search, file search, ...), reasoning items,
`background`, any `truncation` but "disabled", unknown parameters.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from apps.agents.openai_compat import wire
from apps.agents.openai_compat.wire import Closed, Open, Text

RESPONSE_ID_PREFIX = "resp_"


class InputText(Open):
    type: Literal["input_text", "output_text", "text"]
    text: Text


class InputImage(Open):
    type: Literal["input_image"]
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class Refusal(Open):
    type: Literal["refusal"]
    refusal: Text


InputPart = Annotated[InputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | list[InputPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Open):
    type: Literal["function_call"]
    call_id: wire.CallId
    name: Annotated[str, Field(pattern=wire.TOOL_NAME)]
    arguments: Text
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Open):
    type: Literal["function_call_output"]
    call_id: wire.CallId
    output: Text | list[InputText]
    id: str | None = None
    status: str | None = None


def _item_kind(item: Any) -> str | None:
    # An easy input message may leave out "type" ({"role": "user", "content": "Hi"}), as the SDKs send it.
    if isinstance(item, dict):
        return item.get("type") or ("message" if "role" in item else None)
    return getattr(item, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(Closed):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=wire.TOOL_NAME)]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(Closed):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=wire.TOOL_NAME)]


class FormatText(Closed):
    type: Literal["text"]


class FormatJSONObject(Closed):
    type: Literal["json_object"]


class FormatJSONSchema(Closed):
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=wire.TOOL_NAME)]
    schema_: dict[str, Any] = Field(alias="schema")
    description: Text | None = None
    strict: bool | None = None


class TextConfig(Closed):
    format: (
        Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")] | None
    ) = None
    verbosity: Literal["medium"] | None = None


class StreamOptions(Closed):
    include_obfuscation: bool | None = None


class ResponsesBody(Closed):
    model: Annotated[str, Field(min_length=1)]
    input: Text | Annotated[list[InputItem], Field(min_length=1)]
    instructions: Text | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=wire.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=wire.MAX_TOKENS_LIMIT)] | None = None
    user: Annotated[Text, Field(max_length=256)] | None = None
    safety_identifier: Annotated[Text, Field(max_length=256)] | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    background: Literal[False] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    service_tier: Literal["auto", "default"] | None = None
    reasoning: None = None


def _content(content: str | list[Any]) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, InputImage):
            parts.append({"type": "image_url", "image_url": {"url": part.image_url or ""}})
        elif isinstance(part, Refusal):
            parts.append({"type": "refusal", "refusal": part.refusal})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def _messages(body: ResponsesBody) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    for item in body.input:
        if isinstance(item, MessageItem):
            content = _content(item.content)
            if item.role == "assistant" and isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            messages.append({"role": item.role, "content": content})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            # Parallel calls arrive as consecutive items: one assistant turn, as Chat Completions has it.
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = item.output if isinstance(item.output, str) else "".join(p.text for p in item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


def _item_index(body: ResponsesBody, message_index: int) -> int | None:
    """Which input item became chat message `message_index` (see _messages)."""
    index = 1 if body.instructions else 0
    previous_was_call = False
    for item_index, item in enumerate(body.input if not isinstance(body.input, str) else ()):
        is_call = isinstance(item, FunctionCallItem)
        if not (is_call and previous_was_call):
            if index == message_index:
                return item_index
            index += 1
        previous_was_call = is_call
    return None


def to_chat_body(body: ResponsesBody) -> dict[str, Any]:
    """The Chat Completions body that asks the same of an agent run."""
    chat: dict[str, Any] = {"model": body.model, "messages": _messages(body)}
    if body.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    key: value
                    for key, value in {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                        "strict": tool.strict,
                    }.items()
                    if value is not None
                },
            }
            for tool in body.tools
        ]
    choice = body.tool_choice
    if choice is not None:
        chat["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if isinstance(choice, FunctionChoice)
            else choice
        )
    text_format = body.text.format if body.text is not None else None
    if isinstance(text_format, FormatJSONSchema):
        spec: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema_}
        if text_format.strict is not None:
            spec["strict"] = text_format.strict
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif isinstance(text_format, FormatJSONObject):
        chat["response_format"] = {"type": "json_object"}
    for name, value in (
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("max_completion_tokens", body.max_output_tokens),
        ("user", body.user or body.safety_identifier),
        ("stream", body.stream),
    ):
        if value is not None:
            chat[name] = value
    return chat


def chat_param(param: str | None, body: ResponsesBody | None = None) -> str | None:
    """A Chat Completions parameter named in an error, as the Responses request calls it (`messages[i]`
    -> `input[j]`, counting back the system message made of `instructions` and merged parallel calls)."""
    if param is None:
        return None
    match = re.match(r"^messages\[(\d+)\](.*)$", param)
    if match is not None and body is not None and not isinstance(body.input, str):
        item = _item_index(body, int(match.group(1)))
        if item is not None:
            rest = match.group(2).replace(".tool_call_id", ".call_id")
            return f"input[{item}]{rest}"
    for chat, responses in (
        ("messages", "input"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("max_completion_tokens", "max_output_tokens"),
    ):
        if param.startswith(chat):
            return responses + param[len(chat) :]
    if param.startswith("tools[") and ".function." in param:
        return param.replace(".function.", ".", 1)
    return param
