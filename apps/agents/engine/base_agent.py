"""BaseAgent: one run's lifecycle over the platforms of a registry (seed: base_agent.py).

    pre-hooks -> respond() [prepare_prompt, model calls with retries and fallback, process_response]
              -> post-hooks -> AgentResult

- The model calls (retries, fallback, cooldowns, spend reservations) are PlatformCalls, in
  platform_calls.py, which states the retry and fallback rules; this module is the run around them.
- `timeout_seconds` bounds the whole run (retries, fallbacks, tool calls).
- CancelledError is never swallowed: it propagates, and closing the platform stream closes the HTTP request.
  What the run used so far stays readable in its RunState.

Pure Python: the registry is passed in; nothing here imports Django.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from apps.agents.engine.context import AgentConfig, AgentContext, AgentError, AgentResult
from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.events import ExecutionCompleted, ExecutionFailed, StreamEvent
from apps.agents.engine.platform_calls import PlatformCalls
from apps.agents.engine.retry import RetryPolicy
from apps.agents.engine.run import Emit, HookVeto, RunFailure, RunScope, RunState
from apps.agents.engine.run_stream import RunStream
from apps.agents.engine.spend import SpendGuard
from apps.agents.engine.tools import ToolRegistry, tool_registry
from apps.platforms.base import ChatMessage, Completion
from apps.platforms.errors import PlatformError, public_message

PreHook = Callable[[dict[str, Any], AgentContext], Awaitable[dict[str, Any] | None] | dict[str, Any] | None]
PostHook = Callable[
    [AgentResult, dict[str, Any], AgentContext], Awaitable[AgentResult | None] | AgentResult | None
]

# Keys of input_data that are not extra context for the prompt.
PROMPT_KEYS = ("task", "message", "prompt")
RESERVED_KEYS = (*PROMPT_KEYS, "output_format")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class BaseAgent(PlatformCalls):
    #: Used when the agent's config leaves temperature empty.
    default_temperature: float = 0.7

    def __init__(
        self,
        config: AgentConfig,
        registry: Any,
        *,
        cooldowns: Cooldowns | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        retry_policy: RetryPolicy | None = None,
        tools: ToolRegistry | None = None,
        spend_guard: SpendGuard | None = None,
    ) -> None:
        self.config = config
        # A PlatformRegistry (duck-typed: chain, get, cost), never imported here so the engine stays pure.
        self.registry = registry
        # Without a shared instance cooldowns last for this agent object only; the service passes the
        # process-wide one so that one run's failures spare the next run the retries.
        self.cooldowns = cooldowns if cooldowns is not None else Cooldowns()
        self.retry_policy = retry_policy or RetryPolicy()
        self.tools = tools if tools is not None else tool_registry
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        #: Asked before every provider attempt (budgets); None: nothing limits what runs spend.
        self.spend_guard = spend_guard
        self._pre_hooks: list[PreHook] = []
        self._post_hooks: list[PostHook] = []
        #: The progress of the most recent run started on this instance.
        self.last_run: RunState | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def temperature(self) -> float:
        return self.config.temperature if self.config.temperature is not None else self.default_temperature

    def add_pre_hook(self, hook: PreHook) -> None:
        """`hook(input_data, context)` may return a changed input (or None to keep it) or raise HookVeto."""
        self._pre_hooks.append(hook)

    def add_post_hook(self, hook: PostHook) -> None:
        """`hook(result, input_data, context)` may return a changed result (or None) or raise HookVeto.
        It sees failed results too (check `result.success`), but not cancelled runs."""
        self._post_hooks.append(hook)

    # ------------------------------------------------------------------ seed API
    async def execute(
        self,
        input_data: Mapping[str, Any],
        context: AgentContext | None = None,
        *,
        run: RunState | None = None,
    ) -> AgentResult:
        """Run to the end and return the result. Provider failures give `success=False`; never raises for
        them. CancelledError propagates (the run's progress stays in `run` / `self.last_run`)."""
        return await self.run(input_data, context, run=run)

    async def execute_streaming(
        self,
        input_data: Mapping[str, Any],
        context: AgentContext | None = None,
        *,
        run: RunState | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield events as the run produces them, ending with ExecutionCompleted or ExecutionFailed.

        The run executes in its own task (a RunStream's): its deadline (asyncio.timeout) must not span this
        generator's yields, where the consumer's code runs. Closing the generator or cancelling its consumer
        cancels that task, which closes the upstream request before this returns.
        """

        async def source(stream: RunStream) -> AgentResult:
            result = await self.run(input_data, context, run=run, emit=stream.emit)
            failed = not result.success and result.error is not None
            stream.push(ExecutionFailed(result.error, result) if failed else ExecutionCompleted(result))  # type: ignore[arg-type]
            return result

        stream = RunStream.start(source)
        try:
            while (item := await stream.read()) is not None:
                yield item.event  # type: ignore[union-attr]
        finally:
            await stream.aclose()

    async def prepare_prompt(self, input_data: Mapping[str, Any], context: AgentContext) -> str:
        """The user message of this run: the task, then any other input fields as labelled context."""
        task = next((str(input_data[k]) for k in PROMPT_KEYS if input_data.get(k)), "")
        extras = [f"{key}: {value}" for key, value in input_data.items() if key not in RESERVED_KEYS]
        if extras:
            task += "\n\nInput:\n" + "\n".join(extras)
        return task

    async def process_response(
        self, response: Completion, input_data: Mapping[str, Any], context: AgentContext
    ) -> Any:
        """The run's output from the final completion. Raise RunFailure to fail the run."""
        return response.text

    async def handle_error(
        self, error: Exception, input_data: Mapping[str, Any], context: AgentContext
    ) -> str:
        """The message recorded for a failure, which the user sees. Adapters have already scrubbed keys from
        PlatformErrors; file paths and raw exception text are replaced by a stable message (public_message)
        and the original is logged with the execution id where the error was caught."""
        if isinstance(error, PlatformError):
            status = f" {error.status}" if error.status is not None else ""
            return f"{error.provider}{status} {error.kind}: {public_message(error)}"
        return f"internal error ({type(error).__name__}; details are in the server log)"

    async def pre_execute(self, input_data: dict[str, Any], context: AgentContext) -> dict[str, Any]:
        for hook in self._pre_hooks:
            changed = await _maybe_await(hook(input_data, context))
            if changed is not None:
                input_data = dict(changed)
        return input_data

    async def post_execute(
        self, result: AgentResult, input_data: dict[str, Any], context: AgentContext
    ) -> AgentResult:
        for hook in self._post_hooks:
            changed = await _maybe_await(hook(result, input_data, context))
            if changed is not None:
                result = changed
        return result

    # ------------------------------------------------------------------ the run
    async def run(
        self,
        input_data: Mapping[str, Any],
        context: AgentContext | None = None,
        *,
        run: RunState | None = None,
        emit: Emit | None = None,
    ) -> AgentResult:
        """The whole run as one coroutine. With `emit`, platforms are streamed and every event is awaited
        through it (the terminal event is the caller's to send, once it has recorded the result)."""
        context = context if context is not None else AgentContext()
        state = run if run is not None else RunState(started=self._clock())
        self.last_run = state
        scope = RunScope(dict(input_data), context, state, emit, clock=self._clock)
        timeout = self.config.timeout_seconds
        scope.deadline = self._clock() + timeout if timeout else None
        try:
            try:
                async with asyncio.timeout(timeout or None) as timer:
                    scope.timer = timer
                    scope.input_data = await self.pre_execute(scope.input_data, context)
                    output = await self.respond(scope)
                    result = state.result(
                        success=True, output=output, execution_time=state.elapsed(self._clock())
                    )
            except TimeoutError:
                if not scope.deadline_expired():
                    raise
                self._log(scope, logging.WARNING, "run timed out after %ss", timeout)
                result = self._failed(state, "timeout", f"the run did not finish within {timeout:g} s")
            return await self.post_execute(result, scope.input_data, context)
        except RunFailure as failure:
            # Also a HookVeto from a pre- or post-hook; post-hooks do not see their own veto.
            self._log(scope, logging.INFO, "run failed: %s %s", failure.code, failure.message)
            return self._failed(state, failure.code, failure.message)

    def _failed(self, state: RunState, code: Any, message: str) -> AgentResult:
        result = state.partial_result(code, message)
        result.execution_time = state.elapsed(self._clock())
        return result

    async def respond(self, scope: RunScope) -> Any:
        """Produce the run's output. Subclasses override this (tool loop, structured output, history)."""
        prompt = await self.prepare_prompt(scope.input_data, scope.context)
        user = ChatMessage(role="user", content=prompt)
        scope.state.transcript.append(user)
        completion = await self.call_model(scope, [user])
        scope.state.transcript.append(ChatMessage(role="assistant", content=completion.text))
        scope.state.metadata["finish_reason"] = completion.finish_reason
        return await self.process_response(completion, scope.input_data, scope.context)


__all__ = ["AgentError", "BaseAgent", "HookVeto", "PostHook", "PreHook", "RunFailure", "RunState"]
