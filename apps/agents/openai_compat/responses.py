"""An agent run rendered as OpenAI objects: `chat.completion`, `chat.completion.chunk`, `model`, `list`.

`id` is `chatcmpl-<execution_id>`, so any completion can be looked up at /api/v1/executions/<execution_id>/;
`model` echoes the agent slug the client asked for (the provider model actually used is on the execution).
"""

from __future__ import annotations

import json
import time
from typing import Any

from apps.agents.engine.context import AgentResult
from apps.agents.models import Agent

COMPLETION_ID_PREFIX = "chatcmpl-"
# The agent's tool loop is internal: the client always receives the final answer, never a tool call.
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


def finish_reason(result: AgentResult) -> str:
    return FINISH_REASONS.get(str(result.metadata.get("finish_reason") or "stop"), "stop")


def usage(result: AgentResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.tokens_used,
    }


def chat_completion(result: AgentResult, *, model: str, created: int | None = None) -> dict[str, Any]:
    return {
        "id": completion_id(result.execution_id),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": output_text(result.output), "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
    }


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
        self, choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage_value
        return chunk

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def role(self) -> dict[str, Any]:
        return self._delta({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text})

    def finish(self, result: AgentResult) -> dict[str, Any]:
        return self._delta({}, finish_reason(result))

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
