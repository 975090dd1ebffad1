"""The spend hook: what the engine asks before every provider attempt, and tells after it.

The engine knows nothing about budgets or databases. Before each attempt (the first, every retry, every
fallback) it calls `SpendGuard.reserve(AttemptSpec)` with the attempt's worst case; the guard either holds
that amount against every budget that applies or raises `SpendRefused`, and then nothing is sent. After the
attempt, whatever its outcome (answer, error, stream cut, cancellation), the engine calls `settle` with the
usage the attempt reported (zero if none), so the guard can record the exact cost and release the rest.

The service layer implements the guard with the ORM (apps/agents/services/budgets.py). Pure Python here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from apps.agents.engine.run import RunFailure
from apps.platforms.base import ChatMessage, CompletionRequest, Usage

#: Tokens counted per message on top of its text (role markers, separators), and per request.
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 16


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """One provider attempt as the guard prices it: the worst case of its input and output tokens."""

    platform: str
    model: str
    input_tokens: int
    output_tokens: int

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)


class SpendRefused(RunFailure):
    """No budget room (or no concurrency slot) for the next attempt: the run fails with `budget_exceeded`
    and the attempt is never sent. `retry_after` is when the budget that refused it resets, in seconds."""

    def __init__(self, message: str, *, retry_after: int | None = None, budget: str = "") -> None:
        super().__init__("budget_exceeded", message)
        self.retry_after = retry_after
        self.budget = budget


def ends_the_call(platform: str, preferred: str, attempts: Sequence[Any]) -> bool:
    """Whether a budget refusal of an attempt on `platform` fails the model call, given the call's attempts
    so far (the refused one last). A refusal never starts a fallback: the preferred platform's first attempt
    refused fails the run (the caller asked for that model, nothing was tried). But it does not end one
    either: a retry or a fallback the budget cannot afford moves on to the next platform of the chain, which
    may be cheaper; the run fails `budget_exceeded` only when no later platform fits."""
    return platform == preferred and not any(a.platform == platform for a in attempts[:-1])


class SpendGuard(Protocol):
    #: max_tokens sent when the agent sets none, so that the reservation is a true upper bound.
    output_cap: int

    async def reserve(self, attempt: AttemptSpec) -> Any:
        """Hold the attempt's worst case; raise SpendRefused when a budget cannot afford it."""

    async def settle(self, reservation: Any, usage: Usage, cost: Decimal | None = None) -> None:
        """Record what the attempt used (`cost`: its price when the engine has it) and release the rest of
        its reservation. Must not raise."""


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def worst_case_input_tokens(request: CompletionRequest) -> int:
    """An upper bound of the request's input tokens without a tokenizer: byte-level BPE tokenizers (every
    provider's) never produce more tokens than the text has UTF-8 bytes, plus framing per message. It
    overestimates English about fourfold; a reservation that is too large is released at settlement,
    one that is too small could let a budget be overshot."""
    total = REQUEST_OVERHEAD_TOKENS + _text_bytes(request.system_prompt or "")
    total += _messages_bytes(request.messages)
    if request.tools:
        tools = [
            {"name": t.name, "description": t.description, "parameters": t.parameters} for t in request.tools
        ]
        total += _text_bytes(json.dumps(tools, default=str))
    if request.json_schema is not None:
        total += _text_bytes(json.dumps(request.json_schema, default=str))
    return total


def _messages_bytes(messages: Sequence[ChatMessage]) -> int:
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + _text_bytes(message.content)
        for call in message.tool_calls:
            total += _text_bytes(call.name) + _text_bytes(json.dumps(call.arguments, default=str))
    return total


def attempt_spec(platform: str, request: CompletionRequest, *, output_cap: int) -> AttemptSpec:
    output = request.max_tokens if request.max_tokens is not None else output_cap
    return AttemptSpec(platform, request.model, worst_case_input_tokens(request), int(output))


def guess_first_attempt(
    platform: str,
    model: str,
    config: Any,
    input_data: Any,
    context: Any,
    *,
    output_cap: int,
) -> AttemptSpec:
    """The first attempt's worst case guessed before the run builds its request, so that it can be held with
    the run's row in one round trip (services/budgets.py). Counted like worst_case_input_tokens over what the
    request will carry, as the caller sent it: the system prompt, the input as JSON (the prompt renders it in
    fewer bytes), the history and the client's messages, the output schema twice (in the prompt and in the
    request), a quarter over. A guess that falls short costs only the round trip it was to save: the guard
    then holds the attempt's real worst case before it is sent."""
    options = getattr(context, "options", None)
    history = list(getattr(context, "conversation_history", None) or ())
    messages = list(options.messages or ()) if options is not None else []
    schema = (options.json_schema if options is not None else None) or config.output_schema
    total = REQUEST_OVERHEAD_TOKENS + _text_bytes(config.system_prompt or "")
    total += _text_bytes(json.dumps(input_data, default=str)) + MESSAGE_OVERHEAD_TOKENS
    total += sum(MESSAGE_OVERHEAD_TOKENS + _text_bytes(str(turn.get("content", ""))) for turn in history)
    total += _messages_bytes(messages)
    if schema is not None:
        total += 2 * _text_bytes(json.dumps(schema, default=str))
    output = config.max_tokens if config.max_tokens is not None else output_cap
    return AttemptSpec(platform, model, total + total // 4, int(output))


async def settle_shielded(
    guard: SpendGuard, reservation: Any, usage: Usage | None, cost: Decimal | None = None
) -> None:
    """Settle even when the attempt ended by cancellation: shielded, so that a second cancel of the run
    does not leave the reservation held (it would otherwise wait for the reaper)."""
    await asyncio.shield(guard.settle(reservation, usage or Usage(), cost))
