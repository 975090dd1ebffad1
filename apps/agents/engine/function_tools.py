"""Project tools: the deploying team's own Python functions, offered to agents that allowlist them.

    from apps.agents.engine.function_tools import agent_tool

    @agent_tool(timeout=10)
    def lookup_order(order_id: int, include_items: bool = False) -> dict:
        \"\"\"Find an order by its number.\"\"\"
        ...

The argument schema is built by pydantic from the type hints (the model sees it as the tool's JSON Schema),
the description is the docstring, and every call's arguments are validated and converted by pydantic before
the function runs, so `order_id` really is an int. Sync and async functions both work; a sync one runs in a
worker thread (see tools.py). The decorator returns the function unchanged, so it stays callable and testable.

Modules holding such functions are imported at startup from the AGENT_TOOL_MODULES setting (services layer);
this module itself imports nothing from Django.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar, overload

import pydantic

from apps.agents.engine.tools import (
    MAX_RESULT_CHARS,
    Tool,
    ToolError,
    ToolFunction,
    ToolRegistry,
    tool_registry,
)

F = TypeVar("F", bound=Callable[..., Any])

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def function_tool(
    function: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    max_result_chars: int = MAX_RESULT_CHARS,
) -> Tool:
    """A Tool for `function`: schema from its type hints, description from its docstring."""
    tool_name = name or function.__name__
    if not NAME.match(tool_name):
        raise ValueError(f"tool name {tool_name!r} must match {NAME.pattern} (what every provider accepts)")
    text = description if description is not None else inspect.getdoc(function)
    if not text:
        raise ValueError(f"tool {tool_name!r} needs a description: give the function a docstring")
    arguments_model = _arguments_model(function, tool_name)
    schema = arguments_model.model_json_schema()
    schema.pop("title", None)
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    is_async = inspect.iscoroutinefunction(function)

    def checked(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = arguments_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = "/".join(str(p) for p in first["loc"]) or "arguments"
            raise ToolError(f"invalid arguments for {tool_name}: {where}: {first['msg']}") from None
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    if is_async:

        @functools.wraps(function)
        async def call(**arguments: Any) -> Any:
            return await function(**checked(arguments))

    else:

        @functools.wraps(function)
        def call(**arguments: Any) -> Any:
            return function(**checked(arguments))

    return Tool(
        name=tool_name,
        description=text,
        parameters=schema,
        function=call,
        timeout=timeout,
        max_result_chars=max_result_chars,
    )


def _arguments_model(function: ToolFunction, tool_name: str) -> type[pydantic.BaseModel]:
    try:
        hints = inspect.get_annotations(function, eval_str=True)
    except NameError as exc:
        raise ValueError(f"tool {tool_name!r}: a type hint cannot be resolved ({exc})") from None
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ValueError(f"tool {tool_name!r}: *args and **kwargs have no schema; name every argument")
        if parameter.name not in hints:
            raise ValueError(f"tool {tool_name!r}: argument {parameter.name!r} needs a type hint")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    # Extra keys are refused, not ignored: a model that misspells an argument should hear about it.
    config = pydantic.ConfigDict(extra="forbid")
    return pydantic.create_model(f"{tool_name}_arguments", __config__=config, **fields)


@overload
def agent_tool(function: F, /) -> F: ...
@overload
def agent_tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    max_result_chars: int = MAX_RESULT_CHARS,
    registry: ToolRegistry | None = None,
) -> Callable[[F], F]: ...
def agent_tool(
    function: Any = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    max_result_chars: int = MAX_RESULT_CHARS,
    registry: ToolRegistry | None = None,
) -> Any:
    """Register a function as a project tool (in the process-wide registry unless `registry` is given).
    Use bare (`@agent_tool`) or with options (`@agent_tool(timeout=5)`)."""

    def register(target: F) -> F:
        tool = function_tool(
            target, name=name, description=description, timeout=timeout, max_result_chars=max_result_chars
        )
        target_registry = registry if registry is not None else tool_registry
        target_registry.register(tool, replace=_same_origin(target_registry, tool))
        return target

    return register(function) if function is not None else register


def _same_origin(registry: ToolRegistry, tool: Tool) -> bool:
    """Re-registering the same function (a module imported twice, a reload) replaces it; a different
    function under a taken name is refused by the registry."""
    existing = registry.get(tool.name)
    if existing is None:
        return True
    old, new = inspect.unwrap(existing.function), inspect.unwrap(tool.function)
    return (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)
