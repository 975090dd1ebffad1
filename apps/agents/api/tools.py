"""GET /api/v1/tools/: what an agent's `tools` allowlist may name, with each tool's argument schema."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents.api.views import ApiMixin
from apps.agents.services.tools import tool_catalog


class ToolOutputSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="What an agent's `tools` lists: `calculator`, or `server:tool`.")
    kind = serializers.ChoiceField(choices=["builtin", "project", "mcp"])
    description = serializers.CharField()
    parameters = serializers.JSONField(
        allow_null=True, help_text="JSON Schema of the arguments; null while its MCP server is unavailable."
    )
    server = serializers.CharField(help_text="The MCP server (mcp tools only; empty otherwise).")
    available = serializers.BooleanField(help_text="False when its MCP server cannot be reached right now.")
    error = serializers.CharField(help_text="Why the tool is unavailable (empty when it is available).")


class ToolListOutputSerializer(serializers.Serializer):
    tools = ToolOutputSerializer(many=True)


TOOLS_EXAMPLE = {
    "tools": [
        {
            "name": "calculator",
            "kind": "builtin",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
            "server": "",
            "available": True,
            "error": "",
        },
        {
            "name": "docs:search",
            "kind": "mcp",
            "description": "Search the product documentation.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
            "server": "docs",
            "available": True,
            "error": "",
        },
    ]
}


class ToolListView(ApiMixin, APIView):
    @extend_schema(
        tags=["tools"],
        responses={200: ToolListOutputSerializer},
        summary="Tools agents may allowlist: built-ins, the deploying team's project tools, MCP server tools",
        description=(
            "Every name an agent's `tools` may contain. Project tools are Python functions the deploying team "
            "registered; MCP tools belong to servers staff registered and are named `server:tool`. Agent "
            "create and update refuse any other name (400, field `tools`). An MCP server that cannot be "
            "reached is still listed, with `available: false`, `parameters: null` and the reason."
        ),
        examples=[OpenApiExample("tools", value=TOOLS_EXAMPLE, response_only=True)],
    )
    def get(self, request: Request) -> Response:
        listings = tool_catalog()
        return Response(ToolListOutputSerializer({"tools": listings}).data)
