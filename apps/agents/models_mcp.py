"""MCP servers whose tools agents may call (apps/agents/engine/mcp_tools.py). Staff register them in the
Django admin; the secrets they need are named by environment variable and never stored."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from apps.agents.models import TimeStamped, string_list_field

MCP_SERVER_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,31}$",
    "lower-case letters, digits and hyphens (agents allowlist its tools as '<name>:<tool>')",
)
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_env_name(text: object) -> bool:
    return isinstance(text, str) and ENV_VAR_NAME.match(text) is not None


def validate_header_env(value: object) -> None:
    """{header name: environment variable name}: the secret itself never enters the database."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and _is_env_name(v) for k, v in value.items()
    ):
        raise ValidationError(
            'must map header names to environment variable names, e.g. {"Authorization": "DOCS_TOKEN"}',
            code="invalid_headers",
        )


def validate_env_from_env(value: object) -> None:
    """{variable in the server's environment: variable of this process's environment}."""
    if not isinstance(value, dict) or not all(_is_env_name(k) and _is_env_name(v) for k, v in value.items()):
        raise ValidationError(
            'must map variable names to variable names, e.g. {"DOCS_API_KEY": "DOCS_API_KEY"}',
            code="invalid_env",
        )


class McpTransport(models.TextChoices):
    STDIO = "stdio", "stdio (a command this server runs)"
    HTTP = "http", "streamable HTTP (a URL)"


class McpServer(TimeStamped):
    """An MCP server whose tools agents may call. Staff only (Django admin): users allowlist its tools by
    name and never supply a command or URL."""

    name = models.CharField(max_length=32, unique=True, validators=[MCP_SERVER_NAME])
    description = models.TextField(blank=True, max_length=2000)
    transport = models.CharField(max_length=10, choices=McpTransport.choices)
    command = string_list_field(
        help_text='stdio: the program and its arguments, e.g. ["python", "-m", "docs_server"].',
    )
    url = models.URLField(blank=True, max_length=500, help_text="streamable HTTP: the endpoint URL.")
    headers_from_env = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_header_env],
        help_text='HTTP headers whose values are read from environment variables: {"Authorization": "DOCS_AUTH"}.',
    )
    env_from_env = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_env_from_env],
        help_text="stdio: variables the server's process gets, read from this process's environment: "
        '{"DOCS_API_KEY": "DOCS_API_KEY"}. It gets no other variable but PATH, HOME and the like.',
    )
    allowed_tools = string_list_field(
        help_text="The server's tool names agents may allowlist; any other tool of the server is never offered.",
    )
    timeout_seconds = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(600)]
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.transport == McpTransport.STDIO and not self.command:
            raise ValidationError({"command": "a stdio server needs a command"})
        if self.transport == McpTransport.HTTP and not self.url:
            raise ValidationError({"url": "an HTTP server needs a URL"})
