"""Tools an agent may call: Python callables with a JSON Schema for their arguments.

An agent is offered only the tools named in its allowlist (`AgentConfig.tools`). A call to anything else, a
call with arguments that do not match the schema, or a tool that raises, becomes an error *result* fed back
to the model (it can correct itself); none of them fails the run or runs code that was not allowed.

Every call is bounded: a tool has a timeout and a result size cap, and a synchronous function runs in a worker
thread so a slow one never blocks the event loop (a run's other tasks, heartbeats, other runs). A timed-out
call is reported to the model; the thread of a sync function that ignores it finishes on its own.

A tool has two names: `key`, what an agent's allowlist names (`calculator`, or `docs:search` for a tool of
the MCP server `docs`), and `name`, what the model sees and calls. They differ only for MCP tools, because
providers accept only `[a-zA-Z0-9_-]` in function names.

Two harmless built-ins ship: `current_time` and `calculator` (arithmetic parsed with `ast`, never `eval`).
Project tools (engine/function_tools.py) and MCP tools (engine/mcp_tools.py) are Tools like them.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
import math
import operator
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from apps.platforms.base import ToolDefinition
from apps.platforms.errors import shows_internals

logger = logging.getLogger(__name__)

ToolFunction = Callable[..., Any | Awaitable[Any]]

# A tool result goes back to the model inside the next request; keep it to a sensible size.
MAX_RESULT_CHARS = 20_000
#: Seconds a call may take unless its tool says otherwise.
DEFAULT_TIMEOUT = 30.0


class ToolError(Exception):
    """Raised by a tool for a failure the model should read (bad input, nothing found)."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    function: ToolFunction
    #: Seconds before the call is abandoned and the model told so (None: DEFAULT_TIMEOUT).
    timeout: float | None = None
    #: Characters of JSON the result may take; a longer one is cut and marked as cut.
    max_result_chars: int = MAX_RESULT_CHARS
    #: The allowlist name (default: `name`).
    key: str = ""

    @property
    def allowlist_name(self) -> str:
        return self.key or self.name

    def definition(self) -> ToolDefinition:
        return ToolDefinition(name=self.name, description=self.description, parameters=self.parameters)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: Any
    is_error: bool = False

    def as_message_content(self) -> str:
        """The tool message's content: JSON, so the model reads structure the same way on every platform."""
        payload = {"error": self.result} if self.is_error else self.result
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, default=str)
        if len(text) > MAX_RESULT_CHARS:
            text = text[: MAX_RESULT_CHARS - 20] + "... [truncated]"
        return text


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool, *, replace: bool = True) -> None:
        """Add `tool`. Two different tools under one name is a deployment mistake: with `replace=False`
        it raises ValueError instead of silently shadowing the first."""
        if not replace and tool.name in self._tools and self._tools[tool.name] is not tool:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        validator_class = jsonschema.validators.validator_for(tool.parameters)
        validator_class.check_schema(tool.parameters)
        self._tools[tool.name] = tool
        self._validators[tool.name] = validator_class(tool.parameters)

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)
        self._validators.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def tools(self) -> list[Tool]:
        return [self._tools[name] for name in sorted(self._tools)]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def _allowed(self, allowed: Iterable[str]) -> list[Tool]:
        keys = set(allowed)
        return [tool for tool in self._tools.values() if tool.allowlist_name in keys]

    def definitions(self, allowed: Iterable[str]) -> tuple[ToolDefinition, ...]:
        """Definitions of the allowed tools this registry knows (unknown names are skipped)."""
        order = {key: i for i, key in enumerate(dict.fromkeys(allowed))}
        tools = sorted(self._allowed(order), key=lambda t: order[t.allowlist_name])
        return tuple(tool.definition() for tool in tools)

    async def invoke(self, name: str, arguments: Mapping[str, Any], *, allowed: Iterable[str]) -> ToolOutcome:
        """Run one call. Never raises for the model's mistakes or the tool's failures: they are results."""
        keys = set(allowed)
        tool = self._tools.get(name)
        if tool is None and name in keys:
            return ToolOutcome(f"tool {name!r} does not exist", is_error=True)
        if tool is None or tool.allowlist_name not in keys:
            return ToolOutcome(f"tool {name!r} is not available to this agent", is_error=True)
        errors = sorted(self._validators[name].iter_errors(dict(arguments)), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "arguments"
            return ToolOutcome(f"invalid arguments for {name}: {where}: {errors[0].message}", is_error=True)
        timeout = tool.timeout if tool.timeout is not None else DEFAULT_TIMEOUT
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                value = await _call(tool.function, arguments)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
        except TimeoutError as exc:
            # A run's deadline or a cancel arrives as CancelledError; this is the tool's own timeout, or a
            # TimeoutError the tool raised itself (its HTTP client's, say).
            if deadline.expired():
                return ToolOutcome(f"{name} did not answer within {timeout:g} s", is_error=True)
            return ToolOutcome(f"{name} failed: TimeoutError: {exc}", is_error=True)
        except Exception as exc:  # a tool bug must not end the run; the model is told the call failed
            text = f"{name} failed: {type(exc).__name__}: {exc}"
            if shows_internals(text):  # a path or a traceback would reach the model, the stream, the record
                logger.warning("tool %s failed", name, exc_info=exc)
                text = f"{name} failed ({type(exc).__name__})"
            return ToolOutcome(text, is_error=True)
        return ToolOutcome(_capped(value, tool.max_result_chars))


async def _call(function: ToolFunction, arguments: Mapping[str, Any]) -> Any:
    """Await an async tool; run a sync one in a worker thread (it may block on I/O or compute)."""
    target = inspect.unwrap(function)
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(target):
        return await function(**arguments)
    value = await asyncio.to_thread(function, **arguments)
    return await value if inspect.isawaitable(value) else value


def _capped(value: Any, limit: int) -> Any:
    """`value`, or its JSON text cut to `limit` characters with a marker the model can read."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return value
    marker = f"... [truncated: the result had {len(text)} characters, the limit is {limit}]"
    return text[: max(0, limit - len(marker))] + marker


# --------------------------------------------------------------------------- built-in: current_time
def current_time(timezone: str = "UTC") -> dict[str, Any]:
    try:
        zone = UTC if timezone in ("UTC", "utc", "Z") else ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'") from None
    now = datetime.now(zone)
    return {"timezone": timezone, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


CURRENT_TIME = Tool(
    name="current_time",
    description="The current date and time, in UTC or in the given IANA time zone.",
    parameters={
        "type": "object",
        "properties": {
            "timezone": {"type": "string", "description": "IANA time zone, e.g. 'Europe/Paris'. Default UTC."}
        },
        "additionalProperties": False,
    },
    function=current_time,
)


# --------------------------------------------------------------------------- built-in: calculator
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
# Integers are exact in Python and can grow without bound; cap their size so `9**9**9`-style input cannot
# burn the CPU or memory of the process.
MAX_INT_BITS = 4096

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _checked(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent larger than {MAX_EXPONENT}")
    # Estimate an integer power's size before computing it: bits(base**e) <= bits(base) * e.
    exact = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if exact and base.bit_length() * exponent > MAX_INT_BITS:
        raise ToolError("result too large")
    try:
        result = base**exponent
    except OverflowError:
        raise ToolError("result too large") from None
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    if isinstance(result, complex):
        raise ToolError("result is not a real number")
    return result


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
    raise ToolError(
        f"unsupported syntax: {type(node).__name__}; use numbers, + - * / // % ** and parentheses"
    )


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely: the syntax tree is walked, nothing is executed."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    return _evaluate(tree)


def calculator(expression: str) -> dict[str, Any]:
    return {"expression": expression, "result": calculate(expression)}


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses and unary minus.",
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "e.g. '(2 + 3) * 4 / 7'",
                "maxLength": MAX_EXPRESSION_CHARS,
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    function=calculator,
)

BUILTIN_TOOLS = (CURRENT_TIME, CALCULATOR)


def default_tool_registry() -> ToolRegistry:
    return ToolRegistry(BUILTIN_TOOLS)


#: The process-wide registry agents use unless given another one.
tool_registry = default_tool_registry()
