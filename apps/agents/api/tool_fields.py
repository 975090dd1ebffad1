"""The `tools` allowlist's item field, and its OpenAPI description: an enum of the names that may be listed
when the schema is generated (built-ins, project tools, allowed tools of enabled MCP servers)."""

from __future__ import annotations

import logging
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension

from apps.agents.api.fields import StrictCharField
from apps.agents.services.tools import allowlist_names

logger = logging.getLogger(__name__)


class ToolNameField(StrictCharField):
    """One allowlisted tool name. Checked against the registered tools by the agent service (400 `tools`)."""


class ToolNameFieldExtension(OpenApiSerializerFieldExtension):
    target_class = ToolNameField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {
            "type": "string",
            "enum": allowlist_names(),
            "description": "A tool name listed by GET /api/v1/tools/ (this enum: the list when the schema "
            "was generated).",
        }
