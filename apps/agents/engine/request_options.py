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
    #: This request's messages as the client sent them (tool turns and images included), after the context's
    #: history, ending with the user's message or with tool results (see new_turns).
    messages: tuple[ChatMessage, ...] | None = None
    #: Whether structured answers are streamed as they are written. A native event stream can take text
    #: back (output.reset, when an answer fails validation and is re-asked); OpenAI's chunk and Responses
    #: streams cannot, so the facade leaves this off and its clients get the validated JSON whole.
    stream_structured: bool = False

    @property
    def client_tool_names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.client_tools)


def new_turns(messages: Sequence[ChatMessage] | None, prompt: str) -> list[ChatMessage]:
    """This request's turns, which follow the context's history: the client's messages when it sent them
    (a conversation ending with the user's message gets that message's text replaced by the agent's prompt
    for it, which may add output instructions, keeping its images; one ending with tool results continues
    from them as it is), otherwise just the user's prompt."""
    if messages is None:
        return [ChatMessage(role="user", content=prompt)]
    turns = list(messages)
    if turns and turns[-1].role == "user":
        turns[-1] = replace(turns[-1], content=prompt)
    return turns


def request_extras(
    options: RequestOptions | None, *, json_schema: Mapping[str, Any] | None, tools: Sequence[ToolDefinition]
) -> dict[str, Any]:
    """The CompletionRequest fields a request's options set: the sampling options, and tool_choice / strict
    only on calls that offer the client's tools / its schema."""
    if options is None:
        return {}
    extras: dict[str, Any] = {"sampling": options.sampling}
    if options.tool_choice is not None and any(t.name in options.client_tool_names for t in tools):
        extras["tool_choice"] = options.tool_choice
    if json_schema is not None and json_schema is options.json_schema:
        extras["json_schema_strict"] = options.json_schema_strict
    return extras
