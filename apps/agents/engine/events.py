"""Typed stream events. `name` is the SSE event name (ARCHITECTURE.md), `data()` its JSON payload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from apps.agents.engine.context import AgentError, AgentResult


@dataclass(frozen=True, slots=True)
class _FieldsEvent:
    """An event whose payload is its fields, by name; `keys` renames those the wire spells otherwise."""

    keys: ClassVar[Mapping[str, str]] = {}

    def data(self) -> dict[str, Any]:
        return {self.keys.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class ExecutionCreated(_FieldsEvent):
    name: ClassVar[str] = "execution.created"
    execution_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class OutputDelta(_FieldsEvent):
    name: ClassVar[str] = "output.delta"
    text: str


@dataclass(frozen=True, slots=True)
class OutputReset(_FieldsEvent):
    """The text streamed so far is not the answer (structured output that failed validation): discard it;
    the deltas that follow are the model's next attempt."""

    name: ClassVar[str] = "output.reset"
    reason: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    name: ClassVar[str] = "tool.call"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    #: A call to one of the client's own tools (OpenAI-compatible requests): handed back, not run here.
    client: bool = False

    def data(self) -> dict[str, Any]:
        data = {"id": self.call_id, "tool": self.tool, "arguments": self.arguments}
        if self.client:
            data["client"] = True
        return data


@dataclass(frozen=True, slots=True)
class ToolResultEvent(_FieldsEvent):
    name: ClassVar[str] = "tool.result"
    keys: ClassVar[Mapping[str, str]] = {"call_id": "id"}
    call_id: str
    tool: str
    result: Any
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class PlatformFallback(_FieldsEvent):
    name: ClassVar[str] = "platform.fallback"
    keys: ClassVar[Mapping[str, str]] = {"from_platform": "from", "to_platform": "to"}
    from_platform: str
    to_platform: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExecutionCompleted:
    """Carries the final result; the service layer renders it as the seed's response body."""

    name: ClassVar[str] = "execution.completed"
    result: AgentResult

    def data(self) -> dict[str, Any]:
        from apps.agents.engine.serialize import result_body

        return result_body(self.result)


@dataclass(frozen=True, slots=True)
class ExecutionFailed:
    name: ClassVar[str] = "execution.failed"
    error: AgentError
    result: AgentResult | None = None

    def data(self) -> dict[str, Any]:
        return {"error": self.error.to_dict()}


@dataclass(frozen=True, slots=True)
class ExecutionCancelled:
    name: ClassVar[str] = "execution.cancelled"
    result: AgentResult | None = None

    def data(self) -> dict[str, Any]:
        return {}


StreamEvent = (
    ExecutionCreated
    | OutputDelta
    | OutputReset
    | ToolCallEvent
    | ToolResultEvent
    | PlatformFallback
    | ExecutionCompleted
    | ExecutionFailed
    | ExecutionCancelled
)
