"""OpenAPI for the event streams: what each server-sent event of a run looks like.

OpenAPI 3.0 describes a `text/event-stream` response by one event (tools such as schemathesis read it so):
an object with `id` (the event's number in its run), `event` (its name) and `data` (one line of JSON, whose
shape `contentSchema` gives per event name). The payloads are those of apps/agents/engine/events.py; the
completed event carries the execute response body (AgentExecutionOutputSerializer).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse

from apps.agents.api.sse import EVENT_STREAM

_STRING = {"type": "string"}
# Inside contentSchema (plain JSON Schema, not an OpenAPI 3.0 Schema Object), null is a type of its own.
_NULLABLE_STRING = {"type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": _STRING, "message": _STRING},
}
_RESULT_BODY = {
    "type": "object",
    "required": [
        "success",
        "output",
        "execution_id",
        "tokens_used",
        "input_tokens",
        "output_tokens",
        "cost",
        "execution_time",
        "platform_used",
        "model_used",
        "metadata",
    ],
    "properties": {
        "success": {"type": "boolean"},
        "output": {"description": "Text, or the parsed JSON for structured agents."},
        "execution_id": {"type": ["string", "null"], "format": "uuid"},
        "tokens_used": {"type": "integer"},
        "input_tokens": {"type": "integer"},
        "output_tokens": {"type": "integer"},
        "cost": {"type": "number"},
        "execution_time": {"type": "number"},
        "platform_used": _NULLABLE_STRING,
        "model_used": _NULLABLE_STRING,
        "metadata": {"type": "object"},
        "error": _ERROR,
    },
}


def _payload(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    keys = list(properties) if required is None else required
    return {"type": "object", "required": keys, "properties": properties}


#: The JSON `data` of each event, by event name.
EVENT_PAYLOADS: dict[str, dict[str, Any]] = {
    "execution.created": _payload(
        {"execution_id": {"type": "string", "format": "uuid"}, "agent_id": _STRING}
    ),
    "output.delta": _payload({"text": _STRING}),
    "output.reset": _payload({"reason": _STRING}),
    "tool.call": _payload({"id": _STRING, "tool": _STRING, "arguments": {"type": "object"}}),
    "tool.result": _payload({"id": _STRING, "tool": _STRING, "result": {}, "is_error": {"type": "boolean"}}),
    "platform.fallback": _payload({"from": _STRING, "to": _STRING, "reason": _STRING}),
    "execution.completed": _RESULT_BODY,
    "execution.failed": _payload({"error": _ERROR}),
    "execution.cancelled": {"type": "object"},
}

RUN_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event: `id:`, `event:` and a `data:` line of JSON.",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's number in its run."},
        "event": {"type": "string", "enum": list(EVENT_PAYLOADS)},
        "data": {"type": "string", "description": "JSON; its shape depends on `event`."},
    },
    "oneOf": [
        {
            "properties": {
                "event": {"type": "string", "enum": [name]},
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
            }
        }
        for name, payload in EVENT_PAYLOADS.items()
    ],
}

SSE_EXAMPLE = (
    "id: 1\nevent: execution.created\n"
    'data: {"execution_id":"5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e","agent_id":"code-helper"}\n\n'
    'id: 2\nevent: output.delta\ndata: {"text":"def fibonacci(n):"}\n\n'
    ": ping\n\n"
    'id: 3\nevent: output.delta\ndata: {"text":" ..."}\n\n'
    "id: 4\nevent: execution.completed\n"
    'data: {"success":true,"output":"def fibonacci(n): ...",'
    '"execution_id":"5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e",'
    '"tokens_used":150,"input_tokens":100,"output_tokens":50,"cost":0.0005,"execution_time":1.2,'
    '"platform_used":"openai","model_used":"gpt-4o-mini","metadata":{}}\n\n'
)

SSE_STREAM_EXAMPLE = OpenApiExample(
    "Event stream", value=SSE_EXAMPLE, media_type=EVENT_STREAM, response_only=True, status_codes=["200"]
)


def run_events_response(description: str) -> OpenApiResponse:
    """A 200 `text/event-stream` of a run's events."""
    return OpenApiResponse(response=RUN_EVENT_SCHEMA, description=description, examples=[SSE_STREAM_EXAMPLE])
