"""What every /api/v1/ view shares: the mixin (auth, rate limit, JSON only, schema, event-stream negotiation)
and cursor pagination."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import CursorPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.request import Request

from apps.agents.api.parsers import BoundedJSONParser
from apps.agents.api.renderers import SafeJSONRenderer
from apps.agents.api.schema import ApiAutoSchema
from apps.agents.api.sse import wants_event_stream
from apps.agents.api.throttling import UserRateThrottle
from apps.agents.errors import ApplicationError


class ApiMixin:
    """What every endpoint shares: token + session auth (settings), login required, the per-user rate limit,
    the schema that documents the error envelope."""

    permission_classes = [IsAuthenticated]
    throttle_classes = [UserRateThrottle]
    # JSON only: the bodies are nested objects, which form encodings cannot express (anything else: 415).
    parser_classes = [BoundedJSONParser]
    renderer_classes = [SafeJSONRenderer, BrowsableAPIRenderer]
    schema = ApiAutoSchema()
    #: Actions that may answer text/event-stream.
    event_stream_actions: frozenset[str] = frozenset()

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # A client asking for an event stream gets one from these actions, which build the stream themselves;
        # anything else it is sent (an error before the stream starts) is JSON, which an SSE client can read.
        if getattr(self, "action", None) in self.event_stream_actions and wants_event_stream(request):
            renderer = self.get_renderers()[0]
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)  # type: ignore[misc]


class Pagination(CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = "-created_at"

    def get_page_size(self, request: Request) -> int:
        # DRF silently falls back to the default for page_size=abc; a client should learn it asked wrongly.
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ApplicationError(
                f"page_size must be an integer from 1 to {self.max_page_size}.",
                fields={"page_size": ["Invalid page size."]},
            )
        return int(raw)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        paginated = super().get_paginated_response_schema(schema)
        # DRF writes OpenAPI 3.0's `nullable`; the schema is 3.1, where null is a type of its own.
        for link in ("next", "previous"):
            field = paginated["properties"][link]
            if field.pop("nullable", False):
                field["type"] = [field["type"], "null"]
        return paginated

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
            elif parameter["name"] == self.cursor_query_param:
                # Opaque: a value that is no cursor of ours is a 404 "Invalid cursor" (or the first page, as
                # DRF decodes it); only a NUL is refused as invalid input (400).
                parameter["schema"] = {"type": "string", "pattern": "^[^\\u0000]*$"}
        return parameters


class AgentPagination(Pagination):
    ordering = ("name", "id")
