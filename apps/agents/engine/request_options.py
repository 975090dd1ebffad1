"""What one request asks of a run beyond its input: generation options, a response schema, the client's own
tools and the conversation exactly as the client sent it. Set by the OpenAI-compatible facade
(apps/agents/openai_compat), None for ordinary API runs. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from apps.platforms.base import ChatMessage, Sampling, ToolChoice, ToolDefinition


@dataclass(frozen=True, slots=True)
class RequestOptions:
    sampling: Sampling = field(default_factory=Sampling)
    tool_choice: ToolChoice | None = None
    #: Tools the client runs itself: offered to the model beside the agent's own; a call to one ends the run
    #: with finish_reason "tool_calls" and the calls handed back to the client.
    client_tools: tuple[ToolDefinition, ...] = ()
    #: A per-request response schema; replaces the agent's output_schema for this run.
    json_schema: Mapping[str, Any] | None = None
    json_schema_strict: bool = False
    #: The conversation as the client sent it (tool turns and images included), ending with the user's
    #: message or with tool results. When set, the model sees this instead of the context's history.
    messages: tuple[ChatMessage, ...] | None = None

    @property
    def client_tool_names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.client_tools)


def client_conversation(
    messages: Sequence[ChatMessage], prompt: str
) -> tuple[list[ChatMessage], ChatMessage | None]:
    """(the messages for the model, the new user message or None). A conversation ending with the user's
    message gets that message's text replaced by the agent's prompt for it (which may add output
    instructions), keeping its images; one ending with tool results continues from them as it is."""
    conversation = list(messages)
    if not conversation or conversation[-1].role != "user":
        return conversation, None
    user = replace(conversation[-1], content=prompt)
    conversation[-1] = user
    return conversation, user
