"""Agents are records; every run is an AgentExecution with a strict lifecycle (ARCHITECTURE.md)."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from apps.agents.schema_policy import check_schema_setting

SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9]+(?:-[a-z0-9]+)*$",
    "Use lowercase letters, digits and single hyphens, e.g. 'code-reviewer'.",
    code="invalid_slug",
)


class TimeStamped(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class AgentType(models.TextChoices):
    TASK = "task", "Task"
    CONVERSATIONAL = "conversational", "Conversational"


class PlatformName(models.TextChoices):
    DEFAULT = "", "Configured default"
    OPENAI = "openai", "OpenAI (or OpenAI-compatible)"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Gemini"
    LOCAL = "local", "Local (llama.cpp)"


def validate_json_schema(value: object) -> None:
    """A JSON Schema that the schema policy accepts (apps/agents/engine/schema_policy.py): no references
    outside itself, RE2-compatible patterns, capped size, depth and counts."""
    check_schema_setting(value)


def validate_string_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValidationError("must be a list of non-empty strings", code="invalid_list")


class Agent(TimeStamped):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="agents"
    )
    name = models.CharField(max_length=200)
    agent_id = models.CharField(max_length=100, unique=True, validators=[SLUG_VALIDATOR])
    description = models.TextField(blank=True, max_length=5000)
    agent_type = models.CharField(max_length=20, choices=AgentType.choices, default=AgentType.TASK)
    system_prompt = models.TextField(blank=True, max_length=50_000)
    capabilities = models.JSONField(default=list, blank=True, validators=[validate_string_list])
    preferred_platform = models.CharField(max_length=20, choices=PlatformName.choices, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, help_text="Empty: the platform's default model.")
    temperature = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(2.0)],
        help_text="Empty: 0.3 for task agents, 0.8 for conversational ones.",
    )
    max_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(200_000)]
    )
    output_schema = models.JSONField(null=True, blank=True, validators=[validate_json_schema])
    tools = models.JSONField(default=list, blank=True, validators=[validate_string_list])
    is_shared = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    timeout_seconds = models.PositiveIntegerField(
        default=120, validators=[MinValueValidator(1), MaxValueValidator(3600)]
    )
    max_retries = models.PositiveSmallIntegerField(default=2, validators=[MaxValueValidator(10)])
    history_window = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(200)]
    )
    max_tool_calls = models.PositiveSmallIntegerField(default=10, validators=[MaxValueValidator(100)])
    # For agents seeded from apps/agents/catalog/: the hash of the catalog values last written to this row.
    # When the row's values no longer hash to it, someone edited the agent, and seed_agents leaves it alone.
    catalog_hash = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["owner", "is_active"]),
            models.Index(fields=["is_shared", "is_active"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(temperature__isnull=True) | Q(temperature__gte=0, temperature__lte=2),
                name="agent_temperature_range",
            )
        ]
        # Staff grant it to let a user publish agents to everyone (apps/agents/services/agents.py).
        permissions = [("share_agent", "Can share an agent with every user")]

    def __str__(self) -> str:
        return f"{self.name} ({self.agent_id})"

    @property
    def effective_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.8 if self.agent_type == AgentType.CONVERSATIONAL else 0.3


class ExecutionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


class ErrorCode(models.TextChoices):
    NONE = "", "None"
    PROVIDER_ERROR = "provider_error", "Provider error"
    TIMEOUT = "timeout", "Timeout"
    CANCELLED_BY_USER = "cancelled_by_user", "Cancelled by user"
    INVALID_OUTPUT = "invalid_output", "Invalid output"
    WORKER_LOST = "worker_lost", "Worker lost"
    LIMIT_EXCEEDED = "limit_exceeded", "Limit exceeded"
    NO_PLATFORM = "no_platform", "No platform"
    BUDGET_EXCEEDED = "budget_exceeded", "Budget exceeded"


class ExecutionMode(models.TextChoices):
    SYNC = "sync", "Synchronous"
    STREAM = "stream", "Streamed"
    BACKGROUND = "background", "Background"


class Conversation(TimeStamped):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    summary = models.TextField(blank=True)
    # Position of the last message folded into `summary` (0: nothing summarised yet).
    summary_upto = models.PositiveIntegerField(default=0)
    # The one execution allowed to run on this conversation at a time (set and cleared conditionally).
    active_execution = models.ForeignKey(
        "AgentExecution", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return self.title or str(self.id)


class AgentExecution(TimeStamped):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # SET_NULL keeps the record of runs (and their cost) when an agent is deleted; agent_slug says which it was.
    agent = models.ForeignKey(Agent, null=True, on_delete=models.SET_NULL, related_name="executions")
    agent_slug = models.CharField(max_length=100, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    status = models.CharField(max_length=20, choices=ExecutionStatus.choices, default=ExecutionStatus.PENDING)
    mode = models.CharField(max_length=20, choices=ExecutionMode.choices, default=ExecutionMode.SYNC)
    input_data = models.JSONField(default=dict)
    context = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=32, choices=ErrorCode.choices, blank=True, default="")
    error_message = models.TextField(blank=True)
    platform_used = models.CharField(max_length=20, blank=True)
    model_used = models.CharField(max_length=200, blank=True)
    attempts = models.JSONField(default=list, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal("0"))
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    execution_time = models.FloatField(null=True, blank=True, help_text="Seconds from start to finish.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Past this time a non-terminal row is failed by the reaper (worker_lost, or timeout while pending).
    deadline_at = models.DateTimeField(null=True, blank=True)
    # A background row that no worker started within PENDING_REDISPATCH_SECONDS of being queued is sent to
    # the workers again by the reaper (apps/agents/services/dispatch.py): how often, and when last.
    redispatch_count = models.PositiveSmallIntegerField(default=0)
    redispatched_at = models.DateTimeField(null=True, blank=True)
    # Set by a cancel request from any process; the process running the execution stops and records it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # NULL, not "", for "no key": the partial unique constraint must not treat keyless runs as duplicates.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # The stats rollup pass that counted this (terminal) row; NULL while stats read it live.
    rollup_pass = models.PositiveIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Stats: one index-only scan per agent.
            models.Index(fields=["agent", "status", "execution_time"], name="exec_agent_status_time"),
            models.Index(fields=["agent", "-created_at"], name="exec_agent_created"),
            models.Index(fields=["user", "-created_at"], name="exec_user_created"),
            models.Index(fields=["conversation", "-created_at"], name="exec_conversation_created"),
            # Stats: an agent's rows not yet counted in a rollup (services/stats_rollup.py).
            models.Index(
                fields=["agent"], name="exec_agent_live_stats", condition=Q(rollup_pass__isnull=True)
            ),
            # The reaper scans only live rows.
            models.Index(
                fields=["status", "deadline_at"],
                name="exec_live_deadline",
                condition=Q(status__in=["pending", "running"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="exec_unique_idempotency_key_per_user",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in ExecutionStatus]), name="exec_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_slug} {self.id} [{self.status}]"

    @property
    def tokens_used(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class MessageRole(models.TextChoices):
    SYSTEM = "system", "System"
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    TOOL = "tool", "Tool"


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # 1, 2, 3... within the conversation; the summary covers positions <= conversation.summary_upto.
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=20, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=200, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    execution = models.ForeignKey(
        AgentExecution, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="message_unique_position")
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


MCP_SERVER_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,31}$",
    "lower-case letters, digits and hyphens (agents allowlist its tools as '<name>:<tool>')",
)
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_header_env(value: object) -> None:
    """{header name: environment variable name}: the secret itself never enters the database."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and ENV_VAR_NAME.match(v) for k, v in value.items()
    ):
        raise ValidationError(
            'must map header names to environment variable names, e.g. {"Authorization": "DOCS_TOKEN"}',
            code="invalid_headers",
        )


def validate_env_from_env(value: object) -> None:
    """{variable in the server's environment: variable of this process's environment}."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and ENV_VAR_NAME.match(k) and isinstance(v, str) and ENV_VAR_NAME.match(v)
        for k, v in value.items()
    ):
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
    command = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_string_list],
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
    allowed_tools = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_string_list],
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


# Spend control and the stats rollup live in their own modules; imported here so that Django registers their
# models with the app and `from apps.agents.models import X` keeps working.
from apps.agents.models_budget import Budget, BudgetReservation, BudgetUsage  # noqa: E402, F401
from apps.agents.models_stats import AgentLatencyBucket, AgentStatsHour, StatsRollupState  # noqa: E402, F401
