"""The request bodies of /v1 as pydantic models: shapes, types and ranges, nothing about agents.

Strict (`"1"` is not a number, `1.5` not an integer, `true` not a temperature), and closed: a parameter we do
not know is refused with a 400 naming it, as OpenAI does, rather than silently dropped. A few parameters
that change nothing about an agent run are accepted (`store`: every run is stored; `metadata`: recorded;
`parallel_tool_calls`: every call of a turn is returned anyway; `prompt_cache_key`; `service_tier` "auto"). `pydantic_error()` turns a ValidationError
into OpenAI's 400 with `param` in OpenAI's notation (`messages[2].content`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from apps.agents.openai_compat.errors import OpenAIError, invalid

MAX_TOKENS_LIMIT = 200_000  # Agent.max_tokens' own validator
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


def _clean_text(value: str) -> str:
    # PostgreSQL stores neither NUL nor lone surrogates (which json.loads happily produces from "\ud800"):
    # refuse them here, as a 400 naming the field, instead of failing the INSERT with a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
# A tool call's id as clients echo it back (OpenAI's "call_...", the Responses API's call_id).
CallId = Annotated[Text, Field(min_length=1, max_length=200)]


class Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Open(BaseModel):
    """Objects whose extra keys clients send and nothing reads (e.g. `cache_control` on a part)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# ---------------------------------------------------------------------------------------------- content parts
class TextPart(Open):
    type: Literal["text", "input_text", "output_text"]
    text: Text


class ImageURL(Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePartBody(Open):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(Open):
    type: Literal["refusal"]
    refusal: Text


UserPart = Annotated[TextPart | ImagePartBody, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


# ---------------------------------------------------------------------------------------------- messages
class FunctionCall(Open):
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    arguments: Text  # a JSON object, as text


class ToolCallBody(Open):
    id: CallId
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Open):
    role: Literal["system", "developer"]
    content: Text | list[TextPart]
    name: str | None = None


class UserMessage(Open):
    role: Literal["user"]
    content: Text | list[UserPart]
    name: str | None = None


class AssistantMessage(Open):
    role: Literal["assistant"]
    content: Text | list[AssistantPart] | None = None
    tool_calls: list[ToolCallBody] | None = None
    refusal: Text | None = None
    name: str | None = None


class ToolMessage(Open):
    role: Literal["tool"]
    tool_call_id: CallId
    content: Text | list[TextPart]


class FunctionMessage(Open):
    role: Literal["function"]


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# ---------------------------------------------------------------------------------------------- tools, formats
class FunctionDef(Closed):
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Closed):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Closed):
    name: Annotated[str, Field(pattern=TOOL_NAME)]


class NamedToolChoice(Closed):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(Closed):
    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class TextFormat(Closed):
    type: Literal["text"]


class JSONObjectFormat(Closed):
    type: Literal["json_object"]


class JSONSchemaFormat(Closed):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class StreamOptions(Closed):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class ChatCompletionBody(Closed):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: Annotated[Text, Field(max_length=256)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # with logprobs
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # Accepted without effect: a cache hint, the default service tier.
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    service_tier: Literal["auto", "default"] | None = None
    # OpenAI's newer name for `user`.
    safety_identifier: Annotated[Text, Field(max_length=256)] | None = None
    # Only null: an agent's model is the agent's business (a value is a 400 naming the parameter).
    reasoning_effort: None = None


# ---------------------------------------------------------------------------------------------- errors
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PARTS = frozenset({"text", "input_text", "output_text", "image_url", "refusal"})
#: The labels pydantic puts in an error's location after a union field: the branch it tried, not a field.
_UNION_LABELS: dict[str, frozenset[str]] = {
    "messages": _ROLES,
    "content": _PARTS | {"str", "function-after"},
    "response_format": frozenset({"text", "json_object", "json_schema"}),
    "tool_choice": frozenset({"literal", "NamedToolChoice"}),
    "stop": frozenset({"str", "function-after"}),
    "input": frozenset({"str", "message", "function_call", "function_call_output"}),
}
_GENERATED = re.compile(r"[\[\(<]")


def error_param(loc: tuple[int | str, ...], prefix: str = "") -> str | None:
    """pydantic's error location in OpenAI's notation: ("messages", 2, "user", "content") ->
    "messages[2].content" (union branch labels dropped)."""
    param = prefix
    owner = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
            continue
        if _GENERATED.search(part):
            continue
        if part in _UNION_LABELS.get(owner, ()):
            owner = ""  # one label per union: the next segment is a field again
            continue
        param += f".{part}" if param else part
        owner = part
    return param or None


def _branch_mismatch(error: Any) -> bool:
    loc = error["loc"]
    last = loc[-1] if loc else None
    return (
        isinstance(last, str)
        and error["type"].endswith("_type")
        and (last in ("str", "int", "float", "bool") or _GENERATED.search(last) is not None)
    )


def pydantic_error(exc: ValidationError, prefix: str = "") -> OpenAIError:
    """The first problem of `exc` as OpenAI's 400 (OpenAI also reports one parameter at a time)."""
    errors = exc.errors(include_url=False)
    # A union reports every branch it tried: "not a string" about a list that failed deeper down says
    # nothing, so branch type mismatches go last; of the rest, the shortest location is where it went wrong.
    relevant = [error for error in errors if not _branch_mismatch(error)] or errors
    first = min(relevant, key=lambda error: len(error_param(error["loc"]) or ""))
    param = error_param(first["loc"], prefix)
    kind = first["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # The discriminator itself is wrong ("role": "robot"): name it.
        tag = str((first.get("ctx") or {}).get("discriminator", "")).strip("'")
        param = f"{param}.{tag}" if param and tag else param or tag
    if kind == "extra_forbidden":
        return OpenAIError(
            f"Unrecognized request argument supplied: {param}",
            status=400,
            param=param,
            code="unknown_parameter",
        )
    if kind == "missing":
        return invalid(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    code = (
        "invalid_type"
        if kind.endswith(("_type", "_parsing")) or kind == "union_tag_invalid"
        else "invalid_value"
    )
    return invalid(f"Invalid value for '{param}': {message}", param=param, code=code)


def validate_body(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise pydantic_error(exc) from None
