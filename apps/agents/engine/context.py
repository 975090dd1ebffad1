"""The dataclasses that cross the engine's boundary (seed: AgentContext, AgentResult). Pure Python."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from apps.agents.engine.request_options import RequestOptions

from apps.agents.engine.schema_policy import SchemaLimits

#: Set by the service layer for the duration of a run so that every log line carries the execution id.
current_execution_id: ContextVar[str | None] = ContextVar("current_execution_id", default=None)

AgentType = Literal["task", "conversational"]

#: Failure codes recorded on an execution (ARCHITECTURE.md).
ErrorCode = Literal[
    "provider_error",
    "timeout",
    "cancelled_by_user",
    "invalid_output",
    "worker_lost",
    "limit_exceeded",
    "no_platform",
    "budget_exceeded",
]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the engine needs to know about an agent; built from the `Agent` row by the service layer."""

    agent_id: str
    name: str
    agent_type: AgentType = "task"
    system_prompt: str = ""
    preferred_platform: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    output_schema: dict[str, Any] | None = None
    tools: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    timeout_seconds: float = 120.0
    max_retries: int = 2
    history_window: int = 10
    max_tool_calls: int = 10
    #: Caps applied to output_schema when it is compiled and run (the service passes the settings' ones).
    schema_limits: SchemaLimits = field(default_factory=SchemaLimits)


@dataclass(slots=True)
class AgentContext:
    """Per-run context (seed). `conversation_history` is a list of {"role", "content"} dicts."""

    execution_id: str | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    conversation_history: list[dict[str, Any]] = field(default_factory=list)
    conversation_summary: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    #: What the request asks beyond its input (OpenAI-compatible facade only); see request_options.py.
    options: RequestOptions | None = None


@dataclass(slots=True)
class Attempt:
    """One call to one platform. `status` is "ok" or the PlatformError kind that ended it."""

    platform: str
    model: str
    status: str
    latency_ms: float
    error: str | None = None
    http_status: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every field, and this runs for every attempt of every run.
        return {name: getattr(self, name) for name in _ATTEMPT_FIELDS}


_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))


@dataclass(frozen=True, slots=True)
class AgentError:
    code: ErrorCode
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(slots=True)
class AgentResult:
    """The outcome of a run (seed). `output` is text, or the parsed JSON for structured agents."""

    success: bool
    output: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal("0")
    execution_time: float = 0.0
    platform_used: str | None = None
    model_used: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    error: AgentError | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    execution_id: str | None = None

    @property
    def tokens_used(self) -> int:
        return self.input_tokens + self.output_tokens
