"""An agent run rendered as OpenAI objects: `chat.completion`, `chat.completion.chunk`, `model`, `list`.

Built with the openai SDK's own types (openai.types.chat), so that what we send is what the SDK parses;
`model_dump(exclude_unset=True)` keeps the fields OpenAI sends as null (`refusal`, `logprobs`, ...) and leaves
out what we never set. `id` is `chatcmpl-<execution_id>`, so any completion can be looked up at
/api/v1/executions/<execution_id>/; `model` echoes the agent slug the client asked for (the provider model
actually used is on the execution).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from openai.types.completion_usage import CompletionUsage

from apps.agents.engine.context import AgentResult
from apps.agents.models import Agent

COMPLETION_ID_PREFIX = "chatcmpl-"
# The agent's own tool loop is internal: the client receives "tool_calls" only for calls to its own tools.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
}


def completion_id(execution_id: str | None) -> str:
    return f"{COMPLETION_ID_PREFIX}{execution_id}"


def output_text(output: Any) -> str:
    """The answer as message content. Structured agents answer JSON: serialised exactly as the stream sends it
    (TaskAgent emits `json.dumps(output, ensure_ascii=False)` as one delta), so both modes give the same text."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False)


def client_tool_calls(result: AgentResult) -> list[Mapping[str, Any]]:
    """The calls to the client's own tools that ended the run (recorded in the execution's metadata)."""
    return list(result.metadata.get("client_tool_calls") or ())


def finish_reason(result: AgentResult) -> str:
    if client_tool_calls(result):
        return "tool_calls"
    return FINISH_REASONS.get(str(result.metadata.get("finish_reason") or "stop"), "stop")


def usage(result: AgentResult) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=result.input_tokens,
        completion_tokens=result.output_tokens,
        total_tokens=result.tokens_used,
    )


def arguments_text(call: Mapping[str, Any]) -> str:
    return json.dumps(call.get("arguments") or {}, ensure_ascii=False)


def chat_completion(result: AgentResult, *, model: str, created: int | None = None) -> dict[str, Any]:
    calls = client_tool_calls(result)
    text = output_text(result.output)
    message = ChatCompletionMessage(role="assistant", content=text or (None if calls else ""), refusal=None)
    if calls:
        message.tool_calls = [
            ChatCompletionMessageFunctionToolCall(
                id=str(call["id"]),
                type="function",
                function=Function(name=str(call["name"]), arguments=arguments_text(call)),
            )
            for call in calls
        ]
    logprobs = result.metadata.get("logprobs")
    completion = ChatCompletion(
        id=completion_id(result.execution_id),
        object="chat.completion",
        created=created if created is not None else int(time.time()),
        model=model,
        system_fingerprint=None,
        choices=[
            Choice(
                index=0,
                message=message,
                logprobs=ChoiceLogprobs(content=logprobs) if logprobs is not None else None,
                finish_reason=finish_reason(result),  # type: ignore[arg-type]
            )
        ],
        usage=usage(result),
    )
    return completion.model_dump(mode="json", exclude_unset=True)


class ChunkFactory:
    """The `chat.completion.chunk` objects of one stream: same id, created and model on every chunk; with
    `include_usage` every chunk carries `"usage": null` and one last chunk (no choices) carries the usage,
    as OpenAI does."""

    def __init__(self, *, execution_id: str, model: str, include_usage: bool) -> None:
        self.execution_id = execution_id
        self.id = completion_id(execution_id)
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())

    def _chunk(
        self, choices: list[ChunkChoice], usage_value: CompletionUsage | None = None
    ) -> dict[str, Any]:
        chunk = ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            system_fingerprint=None,
            choices=choices,
        )
        if self.include_usage:
            chunk.usage = usage_value
        return chunk.model_dump(mode="json", exclude_unset=True)

    def _delta(self, delta: ChoiceDelta, finish: str | None = None) -> dict[str, Any]:
        return self._chunk([ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)])  # type: ignore[arg-type]

    def role(self) -> dict[str, Any]:
        return self._delta(ChoiceDelta(role="assistant", content=""))

    def content(self, text: str) -> dict[str, Any]:
        return self._delta(ChoiceDelta(content=text))

    def tool_calls(self, calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The client's tool calls as OpenAI streams them: per call, a head (id, name) then its arguments."""
        chunks = []
        for index, call in enumerate(calls):
            head = ChoiceDeltaToolCall(
                index=index,
                id=str(call["id"]),
                type="function",
                function=ChoiceDeltaToolCallFunction(name=str(call["name"]), arguments=""),
            )
            body = ChoiceDeltaToolCall(
                index=index, function=ChoiceDeltaToolCallFunction(arguments=arguments_text(call))
            )
            chunks.append(self._delta(ChoiceDelta(tool_calls=[head])))
            chunks.append(self._delta(ChoiceDelta(tool_calls=[body])))
        return chunks

    def finish(self, result: AgentResult) -> dict[str, Any]:
        return self._delta(ChoiceDelta(), finish_reason(result))

    def usage(self, result: AgentResult) -> dict[str, Any]:
        return self._chunk([], usage(result))


def model_object(agent: Agent, *, user: Any) -> dict[str, Any]:
    # Who owns a shared agent is not the caller's business: their own agents say so, the catalog's say
    # "system", anyone else's "shared".
    if agent.owner_id is None:
        owner = "system"
    elif agent.owner_id == getattr(user, "pk", None):
        owner = getattr(user, "username", "you")
    else:
        owner = "shared"
    return {
        "id": agent.agent_id,
        "object": "model",
        "created": int(agent.created_at.timestamp()),
        "owned_by": owner,
    }


def model_list(agents: list[Agent], *, user: Any) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(agent, user=user) for agent in agents]}
