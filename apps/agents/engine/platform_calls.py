"""One model call over the platform chain: retries, fallback, cooldowns and the spend guard.

BaseAgent inherits this; it is its own module because it is the part of a run that talks to providers
(ARCHITECTURE.md "Retry and fallback rules"), while base_agent.py is the run's lifecycle (hooks, deadline,
result). Subclasses reach it through `call_model` only.

- Only `PlatformError.retryable` errors are retried, with full-jitter backoff or the provider's Retry-After,
  at most `max_retries` times per platform. A 400 (`bad_request`) fails the run at once with the provider's
  message: the same request would be wrong everywhere. Anything else falls back to the next platform of
  `registry.chain(preferred_platform)`; a platform in cooldown is skipped without a network call.
- A request that already streamed text to the client is never retried or sent elsewhere.
- Every attempt is reserved with the spend guard before it is sent and settled with what it used, whatever
  its outcome.

Pure Python: the registry is passed in; nothing here imports Django.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from apps.agents.engine.context import AgentConfig, AgentContext, current_execution_id
from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.events import OutputReset, PlatformFallback
from apps.agents.engine.request_options import request_extras
from apps.agents.engine.retry import RetryPolicy, backoff_delay, fits_deadline
from apps.agents.engine.run import RunFailure, RunScope
from apps.agents.engine.spend import SpendGuard, SpendRefused, attempt_spec, ends_the_call, settle_shielded
from apps.agents.engine.streaming import stream_completion
from apps.platforms.base import (
    ChatMessage,
    Completion,
    CompletionRequest,
    Platform,
    ToolDefinition,
    Usage,
)
from apps.platforms.errors import PlatformError, public_message

logger = logging.getLogger("apps.agents.engine")


class PlatformCalls:
    """The provider side of BaseAgent. The attributes below are set by BaseAgent.__init__."""

    config: AgentConfig
    # A PlatformRegistry (duck-typed: chain, get, cost), never imported here so the engine stays pure.
    registry: Any
    cooldowns: Cooldowns
    retry_policy: RetryPolicy
    spend_guard: SpendGuard | None
    _sleep: Callable[[float], Awaitable[Any]]
    _clock: Callable[[], float]
    _rng: Callable[[], float]

    temperature: float
    # BaseAgent.handle_error: the message a failure is recorded with (subclasses may override it).
    handle_error: Callable[[Exception, Mapping[str, Any], AgentContext], Awaitable[str]]

    # ------------------------------------------------------------------ one model call, every platform
    async def call_model(
        self,
        scope: RunScope,
        messages: Sequence[ChatMessage],
        *,
        system_prompt: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
        tools: Sequence[ToolDefinition] = (),
        stream_text: bool = True,
        temperature: float | None = None,
        max_tokens: int | None = None,
        request_options: bool = True,
    ) -> Completion:
        """One completion, with retries and fallback over the chain. Raises RunFailure when none answers.

        Streams (and emits text deltas) when the run is streaming and `stream_text` is set; otherwise uses
        generate(). Usage and cost of the answer are added to the run's state. `request_options=False`: a call
        of the agent's own (a summary) that the client's generation options do not apply to.
        """
        config = self.config
        chain = self.registry.chain(config.preferred_platform or None)
        if not chain:
            raise RunFailure("no_platform", "no AI platform is configured")
        stream = scope.streaming and stream_text
        last_error: PlatformError | None = None
        refused: SpendRefused | None = None  # a budget refused every platform tried since the last error
        skipped: list[str] = []
        previous: tuple[str, str] | None = None  # (platform, why we left it)
        first_attempt = len(scope.state.attempts)
        for name in chain:
            left = self.cooldowns.remaining(name)
            if left:
                why = f"cooling down for {left:.0f} s after repeated failures"
                scope.record_attempt(name, "", "cooldown", None, error=why)
                skipped.append(f"{name}: {why}")
                previous = (name, "cooldown")
                continue
            try:
                platform: Platform = self.registry.get(name)
            except PlatformError as exc:
                why = self._public(scope, name, exc)
                scope.record_attempt(name, "", "unavailable", None, error=why)
                skipped.append(f"{name}: {why}")
                previous = (name, "unavailable")
                continue
            model = config.model if name == chain[0] and config.model else platform.default_model
            if previous is not None:
                self._log(
                    scope, logging.INFO, "falling back from %s to %s (%s)", previous[0], name, previous[1]
                )
                await scope.send(PlatformFallback(previous[0], name, previous[1]))
            request = CompletionRequest(
                model=model,
                messages=tuple(messages),
                system_prompt=config.system_prompt if system_prompt is None else system_prompt,
                temperature=self.temperature if temperature is None else temperature,
                max_tokens=self._max_tokens(config.max_tokens if max_tokens is None else max_tokens),
                json_schema=json_schema,
                tools=tuple(tools),
                # Each attempt gets what is left of the run's deadline: a platform that cannot answer in time
                # says so at once (the local model refuses) or times out itself, reporting what it used.
                timeout=_attempt_timeout(scope.remaining()),
                **request_extras(
                    scope.context.options if request_options else None, json_schema=json_schema, tools=tools
                ),
            )
            unsupported = platform.unsupported(request)
            if unsupported:
                # A fallback platform that cannot honour what the client asked for is skipped, never sent the
                # request without it (the facade refuses the request up front for the first platform).
                why = "does not support " + ", ".join(unsupported)
                scope.record_attempt(name, model, "unsupported", None, error=why)
                skipped.append(f"{name}: {why}")
                previous = (name, "unsupported")
                continue
            try:
                completion, error = await self._try_platform(scope, name, platform, request, stream)
            except SpendRefused as exc:
                if ends_the_call(name, chain[0], scope.state.attempts[first_attempt:]):
                    raise
                refused, previous = exc, (name, "budget_exceeded")
                continue
            if completion is not None:
                return completion
            assert error is not None
            last_error, refused = error, None
            previous = (name, error.kind if error.status is None else f"{error.kind} {error.status}")
        if refused is not None:
            raise refused
        if last_error is None:
            raise RunFailure("no_platform", "no platform available: " + "; ".join(skipped))
        message = await self.handle_error(last_error, scope.input_data, scope.context)
        raise RunFailure("provider_error", f"every platform failed; last error: {message}")

    async def _try_platform(
        self, scope: RunScope, name: str, platform: Platform, request: CompletionRequest, stream: bool
    ) -> tuple[Completion | None, PlatformError | None]:
        """Up to 1 + max_retries attempts on one platform: (completion, None) or (None, the last error)."""
        max_retries = max(0, self.config.max_retries)
        for retry in range(max_retries + 1):
            scope.sent_output = False
            streamed_before = len(scope.state.streamed)
            reported = _ReportedUsage()
            request = dataclasses.replace(request, on_usage=reported.update)
            reservation = await self._reserve(scope, name, request)
            started = self._clock()
            try:
                try:
                    completion = await self._call(
                        scope, name, platform, request, stream, reservation, reported
                    )
                except PlatformError:
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # an adapter bug must not escape as a crash of the run
                    logger.exception("platform %s raised %s", name, type(exc).__name__)
                    raise PlatformError(
                        f"{type(exc).__name__}: {exc}", provider=name, kind="server_error", retryable=False
                    ) from exc
            except PlatformError as error:
                shown = self._public(scope, name, error)
                used = error.usage or reported.usage
                scope.record_attempt(
                    name,
                    request.model,
                    error.kind,
                    started,
                    error=shown,
                    http_status=error.status,
                    usage=used,
                )
                self._charge(scope, name, request.model, used)
                self.cooldowns.record_failure(name, error)
                if scope.sent_output and scope.retractable:
                    # The client was sent part of a structured answer it knows may be taken back: take it
                    # back and go on as if nothing had been sent (retry, then fallback).
                    del scope.state.streamed[streamed_before:]
                    scope.sent_output = False
                    await scope.send(OutputReset(f"the stream from {name} failed: {shown}"))
                if scope.sent_output:
                    raise RunFailure(
                        "provider_error",
                        f"the stream from {name} failed after output was sent: {shown}",
                    ) from None
                if not error.may_fall_back:
                    message = await self.handle_error(error, scope.input_data, scope.context)
                    raise RunFailure("provider_error", message) from None
                if not error.retryable or retry == max_retries:
                    return None, error
                delay = backoff_delay(
                    retry, policy=self.retry_policy, rng=self._rng, retry_after=error.retry_after
                )
                if not fits_deadline(delay, scope.remaining()):
                    self._log(
                        scope, logging.INFO, "%s: a retry in %.2f s would pass the deadline", name, delay
                    )
                    return None, error
                self._log(
                    scope,
                    logging.WARNING,
                    "%s failed (%s); retry %d in %.2f s",
                    name,
                    error.kind,
                    retry + 1,
                    delay,
                )
                await self._sleep(delay)
                continue
            except asyncio.CancelledError:
                expired = scope.deadline_expired()
                status, why = (
                    ("timeout", "the run's deadline passed") if expired else ("cancelled", "cancelled")
                )
                scope.record_attempt(name, request.model, status, started, error=why, usage=reported.usage)
                self._charge(scope, name, request.model, reported.usage)
                raise
            model = completion.model or request.model
            scope.record_attempt(name, model, "ok", started, completion=completion)
            self.cooldowns.record_success(name)
            state = scope.state
            cost = scope.attempt_cost
            state.add_usage(
                completion.usage,
                cost if cost is not None else self.registry.cost(name, model, completion.usage),
            )
            state.platform_used, state.model_used = name, model
            state.last_text = completion.text
            return completion, None
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    # ------------------------------------------------------------------ spend control
    def _max_tokens(self, max_tokens: int | None) -> int | None:
        """With a spend guard, every request carries a max_tokens: an output with no bound could not be
        reserved, and the provider's own default may be far above the deployment's cap."""
        if max_tokens is None and self.spend_guard is not None:
            return self.spend_guard.output_cap
        return max_tokens

    async def _reserve(self, scope: RunScope, name: str, request: CompletionRequest) -> Any:
        """The guard's reservation for this attempt (None without a guard). A refusal fails the run before
        anything is sent: it is recorded as an attempt that made no call."""
        guard = self.spend_guard
        if guard is None:
            return None
        try:
            return await guard.reserve(attempt_spec(name, request, output_cap=guard.output_cap))
        except SpendRefused as refused:
            scope.record_attempt(name, request.model, "budget_exceeded", None, error=refused.message)
            scope.state.metadata["budget"] = {"name": refused.budget, "retry_after": refused.retry_after}
            raise

    async def _call(
        self,
        scope: RunScope,
        platform_name: str,
        platform: Platform,
        request: CompletionRequest,
        stream: bool,
        reservation: Any,
        reported: _ReportedUsage,
    ) -> Completion:
        """One request to one platform; its reservation is settled with the usage it reported, whatever the
        outcome: the completion's, an error's (`usage`, when the adapter knows it), or the last usage a
        stream announced before it was cut or cancelled (zero if none)."""
        scope.attempt_usage = None
        scope.attempt_cost = None
        usage = None
        try:
            if stream:
                completion = await stream_completion(scope, platform, request)
            else:
                completion = await platform.generate(request)
            usage = completion.usage
            # Priced once, here: the run's record and the budget's settlement take the same figure.
            model = completion.model or request.model
            scope.attempt_cost = self.registry.cost(platform_name, model, usage)
            return completion
        except PlatformError as error:
            usage = error.usage or reported.usage or scope.attempt_usage
            raise
        except BaseException:
            usage = reported.usage or scope.attempt_usage
            raise
        finally:
            if reservation is not None and self.spend_guard is not None:
                await settle_shielded(self.spend_guard, reservation, usage, scope.attempt_cost)

    def _charge(self, scope: RunScope, name: str, model: str, usage: Usage | None) -> None:
        """Add what a failed, timed-out or cancelled attempt used (as reported) to the run's usage."""
        if usage is not None and usage.total_tokens:
            scope.state.add_usage(usage, self.registry.cost(name, model, usage))

    # ------------------------------------------------------------------ logs
    def _public(self, scope: RunScope, name: str, error: PlatformError) -> str:
        """What the record and the user get for `error`; the original goes to the log when they differ."""
        shown = public_message(error)
        if shown != error.message:
            self._log(
                scope,
                logging.WARNING,
                "%s %s error (not shown to the user): %s",
                name,
                error.kind,
                error.message,
            )
        return shown

    def _log(self, scope: RunScope, level: int, message: str, *args: Any) -> None:
        execution_id = scope.context.execution_id or current_execution_id.get() or "-"
        logger.log(level, message, *args, extra={"execution_id": execution_id, "agent": self.config.agent_id})


class _ReportedUsage:
    """The latest usage a platform reported for the attempt in flight (see CompletionRequest.on_usage)."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def update(self, usage: Usage) -> None:
        self.usage = usage


def _attempt_timeout(remaining: float | None) -> float | None:
    return None if remaining is None else max(remaining, 0.001)
