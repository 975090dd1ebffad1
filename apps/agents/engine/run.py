"""The progress of one run, kept outside the call stack so that whoever cancelled or timed it out can still
record what it used (attempts, tokens, cost, partial output).

The service layer creates a `RunState`, passes it to `BaseAgent.run(...)` and, if the run task is cancelled,
reads `partial_result()` from it for the execution row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from apps.agents.engine.context import AgentContext, AgentError, AgentResult, Attempt, ErrorCode
from apps.agents.engine.events import StreamEvent
from apps.platforms.base import ChatMessage, Completion, Usage

#: Where a streaming run sends its events (output deltas, tool calls and results, fallbacks).
Emit = Callable[[StreamEvent], Awaitable[None]]


class RunFailure(Exception):
    """Ends a run with a failed result. Raised inside the engine, turned into an AgentResult at its edge."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class HookVeto(RunFailure):
    """Raised by a pre- or post-hook to refuse a run (a quota, a policy). The run fails with `code`."""

    def __init__(self, message: str, *, code: ErrorCode = "limit_exceeded") -> None:
        super().__init__(code, message)


@dataclass(slots=True)
class RunState:
    started: float = field(default_factory=time.monotonic)
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = field(default_factory=lambda: Decimal("0"))
    platform_used: str | None = None
    model_used: str | None = None
    #: Every text delta sent to the client, in order: the partial output of a stream that did not finish.
    streamed: list[str] = field(default_factory=list)
    #: The text of the last answer received (e.g. JSON that failed validation), for the failure record.
    last_text: str | None = None
    #: One record per tool call: {"id", "tool", "arguments", "result", "is_error"}.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: The messages this run added to the conversation: the user's, tool turns, the final answer.
    transcript: list[ChatMessage] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def add_usage(self, usage: Usage, cost: Decimal) -> None:
        self.usage = self.usage + usage
        self.cost += cost

    def partial_output(self) -> str | None:
        if self.streamed:
            return "".join(self.streamed)
        return self.last_text

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def result(
        self,
        *,
        success: bool,
        output: Any = None,
        error: AgentError | None = None,
        execution_time: float | None = None,
    ) -> AgentResult:
        metadata = dict(self.metadata)
        if self.tool_calls:
            metadata["tool_calls"] = list(self.tool_calls)
        return AgentResult(
            success=success,
            output=output,
            input_tokens=self.usage.input_tokens,
            output_tokens=self.usage.output_tokens,
            cost=self.cost,
            execution_time=self.elapsed() if execution_time is None else execution_time,
            platform_used=self.platform_used,
            model_used=self.model_used,
            attempts=list(self.attempts),
            error=error,
            metadata=metadata,
        )

    def partial_result(self, code: ErrorCode, message: str) -> AgentResult:
        """A failed (or cancelled) result carrying whatever output and usage the run got before it ended."""
        return self.result(success=False, output=self.partial_output(), error=AgentError(code, message))


@dataclass(slots=True)
class RunScope:
    """Everything one run's steps share: its input, context, progress, event sink and deadline."""

    input_data: dict[str, Any]
    context: AgentContext
    state: RunState
    #: None for a non-streaming run: platforms are called with generate() and no events are produced.
    emit: Emit | None = None
    #: The run's deadline on the agent's clock (None: no deadline).
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    timer: asyncio.Timeout | None = None
    #: Set once the current request has sent text to the client: from then on it may not be retried.
    sent_output: bool = False
    #: The client can be told to take streamed text back (OutputReset): a structured answer streamed to a
    #: native stream. Then a stream cut after output may still be retried, after a reset.
    retractable: bool = False
    #: The last usage the current attempt's stream announced (a cut or cancelled stream's partial usage).
    attempt_usage: Usage | None = None
    #: What the current attempt's answer cost (set once it answered).
    attempt_cost: Decimal | None = None

    @property
    def streaming(self) -> bool:
        return self.emit is not None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def deadline_expired(self) -> bool:
        return self.timer is not None and self.timer.expired()

    async def send(self, event: StreamEvent) -> None:
        if self.emit is not None:
            await self.emit(event)

    def record_attempt(
        self,
        platform: str,
        model: str,
        status: str,
        started: float | None,
        *,
        error: str | None = None,
        http_status: int | None = None,
        completion: Completion | None = None,
        usage: Usage | None = None,
    ) -> None:
        """One attempt on the run's record; `started` is the clock reading when it began (None: no call).
        A failed attempt's `usage` is what the platform reported before it ended (a timeout, a cancel)."""
        if completion is not None:
            usage = completion.usage
        self.state.attempts.append(
            Attempt(
                platform=platform,
                model=model,
                status=status,
                latency_ms=0.0 if started is None else round((self.clock() - started) * 1000, 2),
                error=error,
                http_status=http_status,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
            )
        )
