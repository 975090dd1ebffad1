"""Agents are records; every run is an AgentExecution with a strict lifecycle (ARCHITECTURE.md)."""

from __future__ import annotations

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


def string_list_field(**options: str) -> models.JSONField:
    """A JSON list of non-empty strings, empty by default (an agent's tools, an MCP server's command)."""
    return models.JSONField(default=list, blank=True, validators=[validate_string_list], **options)


#: The Agent fields that say how it runs. A catalog entry sets exactly these (with its name and sharing) and a
#: client may edit them (with its name, slug and flags): catalog/loader.MANAGED_FIELDS and
#: services/agents.EDITABLE_FIELDS are built from this one list.
AGENT_CONFIG_FIELDS: tuple[str, ...] = (
    "description",
    "agent_type",
    "system_prompt",
    "capabilities",
    "preferred_platform",
    "model",
    "temperature",
    "max_tokens",
    "output_schema",
    "tools",
    "timeout_seconds",
    "max_retries",
    "history_window",
    "max_tool_calls",
)


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
    capabilities = string_list_field()
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
    tools = string_list_field()
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


# Spend control, the stats rollup and MCP servers live in their own modules; imported here so that Django
# registers their models with the app and `from apps.agents.models import X` keeps working (migrations name
# the MCP validators by this path too).
from apps.agents.models_budget import Budget, BudgetReservation, BudgetUsage  # noqa: E402, F401
from apps.agents.models_mcp import (  # noqa: E402, F401
    McpServer,
    McpTransport,
    validate_env_from_env,
    validate_header_env,
)
from apps.agents.models_stats import AgentLatencyBucket, AgentStatsHour, StatsRollupState  # noqa: E402, F401
