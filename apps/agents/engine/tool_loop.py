"""The tool loop shared by both agent kinds: ask the model, run the tools it calls, feed the results back.

Only tools on the agent's allowlist are offered; a call to any other name is answered with an error result
and never executed. Tool failures are results too, so the model can recover. More than `max_tool_calls`
calls in one run fails it with `limit_exceeded` (a model stuck calling tools would otherwise loop until the
deadline, paying for every turn).

Client tools (RequestOptions.client_tools, from an OpenAI-compatible request) are offered beside the agent's
own; the server never runs them. A turn that calls one ends the loop: the completion is returned with only
the client's calls, for the caller to hand back (finish_reason "tool_calls"). Calls to the agent's own tools
in that same turn are not run (the client's next request continues from its own results) and are recorded
in the run's metadata as `skipped_tool_calls`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from apps.agents.engine.events import ToolCallEvent, ToolResultEvent
from apps.agents.engine.run import RunFailure, RunScope
from apps.platforms.base import ChatMessage, Completion

if TYPE_CHECKING:
    from apps.agents.engine.base_agent import BaseAgent


async def complete_with_tools(
    agent: BaseAgent,
    scope: RunScope,
    messages: list[ChatMessage],
    *,
    system_prompt: str | None = None,
    json_schema: Mapping[str, Any] | None = None,
    stream_text: bool = True,
) -> Completion:
    """The model's final answer (a completion without tool calls). `messages` grows with the tool turns,
    which are also appended to the run's transcript."""
    config = agent.config
    allowed = config.tools
    definitions = tuple(agent.tools.definitions(allowed)) if config.max_tool_calls > 0 else ()
    options = scope.context.options
    client_names = options.client_tool_names if options is not None else frozenset()
    if options is not None and options.client_tools:
        definitions = (*definitions, *options.client_tools)
    state = scope.state
    while True:
        completion = await agent.call_model(
            scope,
            messages,
            system_prompt=system_prompt,
            json_schema=json_schema,
            tools=definitions,
            stream_text=stream_text,
        )
        if not completion.tool_calls:
            return completion
        client_calls = tuple(call for call in completion.tool_calls if call.name in client_names)
        if client_calls:
            skipped = [call.name for call in completion.tool_calls if call.name not in client_names]
            if skipped:
                state.metadata["skipped_tool_calls"] = skipped
            return replace(completion, tool_calls=client_calls, finish_reason="tool_calls")
        if len(state.tool_calls) + len(completion.tool_calls) > config.max_tool_calls:
            raise RunFailure(
                "limit_exceeded",
                f"the model asked for more than {config.max_tool_calls} tool calls "
                f"({len(state.tool_calls)} made, {len(completion.tool_calls)} more requested)",
            )
        turn = ChatMessage(role="assistant", content=completion.text, tool_calls=completion.tool_calls)
        messages.append(turn)
        state.transcript.append(turn)
        for call in completion.tool_calls:
            arguments = dict(call.arguments)
            await scope.send(ToolCallEvent(call.id, call.name, arguments))
            started = time.perf_counter()
            outcome = await agent.tools.invoke(call.name, arguments, allowed=allowed)
            latency_ms = round((time.perf_counter() - started) * 1000)
            await scope.send(ToolResultEvent(call.id, call.name, outcome.result, outcome.is_error))
            state.tool_calls.append(
                {
                    "id": call.id,
                    "tool": call.name,
                    "arguments": arguments,
                    "result": outcome.result,
                    "is_error": outcome.is_error,
                    "latency_ms": latency_ms,
                }
            )
            result = ChatMessage(
                role="tool", content=outcome.as_message_content(), tool_call_id=call.id, name=call.name
            )
            messages.append(result)
            state.transcript.append(result)


async def handed_back(scope: RunScope, completion: Completion) -> str:
    """End a run whose model called the client's tools: the calls go on the record (and, streaming, out as
    one event each); the output is whatever text came with them."""
    turn = ChatMessage(role="assistant", content=completion.text, tool_calls=completion.tool_calls)
    scope.state.transcript.append(turn)
    scope.state.metadata["finish_reason"] = "tool_calls"
    scope.state.metadata["client_tool_calls"] = [
        {"id": call.id, "name": call.name, "arguments": dict(call.arguments)}
        for call in completion.tool_calls
    ]
    for call in completion.tool_calls:
        await scope.send(ToolCallEvent(call.id, call.name, dict(call.arguments), client=True))
    return completion.text
