"""OpenAPI details: every operation documents the error envelope for the statuses it can answer, and execute
carries request/response examples, including the SSE event list."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework.fields import CharField

from apps.agents.api.fields import SAFE_JSON_REF, SAFE_JSON_SCHEMA, SAFE_KEYS, SafeJSONObjectField
from apps.agents.api.serializers import WHITESPACE, ErrorEnvelopeSerializer
from apps.agents.catalog.slugs import catalog_slugs

ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `error.fields` names each bad field by its dotted path.",
    "401": "Not authenticated (send `Authorization: Token <token>`), or wrong credentials.",
    "403": "Authenticated, but not allowed (e.g. changing a shared agent you do not own).",
    "404": "No such object, or not yours (someone else's objects are never revealed).",
    "409": "Conflict with the object's current state.",
    "415": "Unsupported media type: send JSON.",
    "429": "Rate limit exceeded: retry after `Retry-After` seconds.",
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}
}


# Text without NUL (which DRF refuses, and PostgreSQL cannot store). Lone surrogates are refused too but not
# written here: a surrogate range in a pattern breaks regex engines that work on code points (Rust's).
TEXT_PATTERN = r"^[^\u0000]+$"  # "+": the empty string is allow_blank's business (its own oneOf branch)
NON_BLANK_TEXT_PATTERN = rf"^[^\u0000]*[^{WHITESPACE}\u0000][^\u0000]*$"


def error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorEnvelopeSerializer, description=description)


class ApiAutoSchema(AutoSchema):
    """Adds the error envelope for 400/401/403/404/429 (and 415 where a body is accepted) to every operation.

    `public = True` on a view (health, token) leaves out 401/403."""

    def _error_codes(self) -> list[str]:
        codes = ["400", "404", "429"]
        if not getattr(self.view, "public", False):
            codes += ["401", "403"]
        codes += getattr(self.view, "extra_error_codes", [])
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append("415")
        return codes

    def _map_serializer_field(
        self, field: Any, direction: str, bypass_extensions: bool = False
    ) -> dict[str, Any]:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # What DRF's CharField refuses (NUL, lone surrogates, and whitespace-only where NOT_BLANK applies) is
        # stated in the schema too, so that a client or a fuzzer can tell valid text from invalid text.
        if direction == "request" and isinstance(field, CharField) and "pattern" not in schema:
            regexes = [v for v in field.validators if isinstance(v, RegexValidator)]
            if not regexes:
                schema["pattern"] = TEXT_PATTERN
            elif all(v.code == "blank" for v in regexes):
                schema["pattern"] = NON_BLANK_TEXT_PATTERN
            # Otherwise (a slug...) spectacular documents the field's own pattern, which is stricter.
        if direction == "request" and isinstance(field, SafeJSONObjectField):
            # Free-form JSON is refused with a NUL anywhere, keys included (json_problems).
            schema.update(propertyNames=SAFE_KEYS, additionalProperties=SAFE_JSON_REF)
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        schema = super()._map_basic_serializer(serializer, direction)
        # Strict input serializers refuse unknown keys: say so, so that clients (and fuzzers) know.
        if direction == "request" and getattr(serializer, "rejects_unknown_fields", False):
            schema["additionalProperties"] = False
        if direction == "request":
            schema.update(getattr(serializer, "schema_overrides", {}))
        return schema

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(error_response(ERROR_DESCRIPTIONS[code]), code)
        if "429" in responses:
            responses["429"].setdefault("headers", {}).update(RETRY_AFTER)
        return responses


# -------------------------------------------------------------------------------- execute
SSE_DESCRIPTION = """\
With `"stream": true` or `Accept: text/event-stream` the answer is `text/event-stream`. Every event has
`id:` (1, 2, 3...), `event:` and one JSON `data:` line; a `: ping` comment comes after SSE_PING_SECONDS
(15 by default) without an event.

| event | data |
|---|---|
| `execution.created` | `{"execution_id", "agent_id"}` (always first) |
| `output.delta` | `{"text"}`; structured agents stream their JSON as it is written too |
| `output.reset` | `{"reason"}`: discard the text streamed so far (a structured answer failed validation and is re-asked); the next deltas are the new answer |
| `tool.call` | `{"id", "tool", "arguments"}`; `"client": true` for a call to the caller's own tool (OpenAI-compatible requests), handed back, not run |
| `tool.result` | `{"id", "tool", "result", "is_error"}` |
| `platform.fallback` | `{"from", "to", "reason"}` |
| `execution.completed` | the full execute response body (last) |
| `execution.failed` | `{"error": {"code", "message"}}` (last) |
| `execution.cancelled` | `{}` (last) |

Closing the connection cancels the run (the execution ends `cancelled`).
"""

EXECUTE_DESCRIPTION = (
    "Run the agent (the seed contract). 200: the run completed. 502: it failed after all retries and "
    "fallbacks, or found no platform, or was cancelled meanwhile (504 when it timed out), with the same "
    "body, "
    "`success: false` and `error.code`. `background: true` answers 202 with links. "
    "An `Idempotency-Key` header makes a retried request return the first run instead of starting "
    "another; the same key with a different request is a 422 `idempotency_key_reused`.\n\n" + SSE_DESCRIPTION
)

EXECUTE_REQUEST_EXAMPLES = [
    OpenApiExample(
        "Synchronous run",
        value={
            "input_data": {"task": "Write a Python function to calculate fibonacci", "output_format": "code"},
            "context": {"conversation_history": []},
        },
        request_only=True,
    ),
    OpenApiExample(
        "Streamed run (SSE)",
        value={"input_data": {"task": "Explain recursion in two sentences"}, "stream": True},
        request_only=True,
    ),
    OpenApiExample(
        "Background run",
        value={"input_data": {"task": "Summarise this week's changes"}, "background": True},
        request_only=True,
    ),
    OpenApiExample(
        "Continue a conversation",
        value={
            "input_data": {"task": "And in Rust?"},
            "context": {"conversation_id": "0b8f5c9e-1d7a-4d2b-9a34-2c1f0e6d7a55"},
        },
        request_only=True,
    ),
]

EXECUTE_SUCCESS_EXAMPLE = OpenApiExample(
    "Completed",
    value={
        "success": True,
        "output": "def fibonacci(n): ...",
        "execution_id": "5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e",
        "tokens_used": 150,
        "input_tokens": 100,
        "output_tokens": 50,
        "cost": 0.0005,
        "execution_time": 1.2,
        "platform_used": "openai",
        "model_used": "gpt-4o-mini",
        "metadata": {},
    },
    response_only=True,
    status_codes=["200"],
)

EXECUTE_FAILURE_EXAMPLE = OpenApiExample(
    "Failed after retries and fallbacks",
    value={
        "success": False,
        "output": None,
        "execution_id": "5f0c3c1e-8a63-4a4b-9d83-4f0d7b0b6a1e",
        "tokens_used": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
        "execution_time": 3.1,
        "platform_used": None,
        "model_used": None,
        "metadata": {},
        "error": {"code": "provider_error", "message": "openai: 503 overloaded; anthropic: 529 overloaded"},
    },
    response_only=True,
    status_codes=["502"],
)

ERROR_ENVELOPE_EXAMPLE = OpenApiExample(
    "Invalid input",
    value={
        "error": {
            "code": "invalid",
            "message": "input_data.task: This field is required.",
            "fields": {"input_data.task": ["This field is required."]},
        }
    },
    response_only=True,
    status_codes=["400"],
)

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "maxLength": 255, "pattern": "^[ -~]*$"},  # what services/idempotency.py accepts
    OpenApiParameter.HEADER,
    required=False,
    description="Up to 255 printable ASCII characters. Same key and body: the first run's answer.",
)

AGENT_ID_PARAMETER = OpenApiParameter(
    "id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The agent's slug (agent_id) or its UUID."
)


def postprocess(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: adds the SafeJSON component (apps/agents/api/fields.py), and writes nullable
    fields as `anyOf`. In OpenAPI 3.1, drf-spectacular writes a nullable field as `oneOf: [X, {type: null}]`;
    when X admits null too (a JSONField: `{}`), `null` matches both branches and `oneOf` fails it."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            branches = node.get("oneOf")
            if isinstance(branches, list) and {"type": "null"} in branches:
                node["anyOf"] = node.pop("oneOf")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(result)
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["SafeJSON"] = SAFE_JSON_SCHEMA
    # The built-in catalog's slugs are refused as a new agent_id (400, services/agents.py): say so.
    reserved = {"enum": sorted(catalog_slugs())}
    for name in ("AgentInputRequest", "PatchedAgentInputRequest"):
        agent_id = schemas.get(name, {}).get("properties", {}).get("agent_id")
        if agent_id is not None:
            agent_id["not"] = reserved
    return result
