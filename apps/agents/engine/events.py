"""Typed stream events. `name` is the SSE event name (ARCHITECTURE.md), `data()` its JSON payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from apps.agents.engine.context import AgentError, AgentResult


@dataclass(frozen=True, slots=True)
class ExecutionCreated:
    name: ClassVar[str] = "execution.created"
    execution_id: str
    agent_id: str

    def data(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "agent_id": self.agent_id}


@dataclass(frozen=True, slots=True)
class OutputDelta:
    name: ClassVar[str] = "output.delta"
    text: str

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True, slots=True)
class OutputReset:
    """The text streamed so far is not the answer (structured output that failed validation): discard it;
    the deltas that follow are the model's next attempt."""

    name: ClassVar[str] = "output.reset"
    reason: str

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason}


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
class ToolResultEvent:
    name: ClassVar[str] = "tool.result"
    call_id: str
    tool: str
    result: Any
    is_error: bool = False

    def data(self) -> dict[str, Any]:
        return {"id": self.call_id, "tool": self.tool, "result": self.result, "is_error": self.is_error}


@dataclass(frozen=True, slots=True)
class PlatformFallback:
    name: ClassVar[str] = "platform.fallback"
    from_platform: str
    to_platform: str
    reason: str

    def data(self) -> dict[str, Any]:
        return {"from": self.from_platform, "to": self.to_platform, "reason": self.reason}


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
