"""Serializers of the records the API reads back: executions (with attempts), stats, conversations, health.
Split from serializers.py (the request side and the seed's execute contract) to keep each file small."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.agents.api.fields import StrictCharField, StrictChoiceField
from apps.agents.api.serializers import ExecutionErrorSerializer, StrictSerializer
from apps.agents.models import SLUG_VALIDATOR, AgentExecution, Conversation, ExecutionStatus, Message


# -------------------------------------------------------------------------------- executions
class AttemptSerializer(serializers.Serializer):
    platform = serializers.CharField()
    model = serializers.CharField()
    status = serializers.CharField(help_text='"ok" or why the attempt ended.')
    latency_ms = serializers.FloatField()
    error = serializers.CharField(allow_null=True, required=False)
    http_status = serializers.IntegerField(allow_null=True, required=False)
    input_tokens = serializers.IntegerField(required=False)
    output_tokens = serializers.IntegerField(required=False)


class ExecutionFilterSerializer(StrictSerializer):
    agent = StrictCharField(
        required=False, max_length=100, validators=[SLUG_VALIDATOR], help_text="Agent slug or id."
    )
    status = StrictChoiceField(choices=ExecutionStatus.choices, required=False)
    conversation = serializers.UUIDField(required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    # Pagination parameters are read by the paginator; listed so that they are not "unknown".
    cursor = serializers.CharField(required=False, allow_blank=True)
    page_size = serializers.CharField(required=False)


class ExecutionListOutputSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent_slug", help_text="The agent's slug (kept if it was deleted).")
    agent_uuid = serializers.UUIDField(source="agent_id", allow_null=True)
    conversation = serializers.UUIDField(source="conversation_id", allow_null=True)
    error = serializers.SerializerMethodField()
    tokens_used = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False)

    class Meta:
        model = AgentExecution
        fields = (
            "id",
            "agent",
            "agent_uuid",
            "conversation",
            "status",
            "mode",
            "error",
            "platform_used",
            "model_used",
            "input_tokens",
            "output_tokens",
            "tokens_used",
            "cost",
            "execution_time",
            "created_at",
            "started_at",
            "finished_at",
        )
        read_only_fields = fields

    @extend_schema_field(ExecutionErrorSerializer(allow_null=True))
    def get_error(self, execution: AgentExecution) -> dict[str, str] | None:
        if not execution.error_code:
            return None
        return {"code": execution.error_code, "message": execution.error_message}


class ExecutionDetailOutputSerializer(ExecutionListOutputSerializer):
    input_data = serializers.JSONField()
    context = serializers.JSONField()
    output = serializers.JSONField(allow_null=True)
    attempts = AttemptSerializer(many=True)
    metadata = serializers.JSONField()

    class Meta(ExecutionListOutputSerializer.Meta):
        fields = (
            *ExecutionListOutputSerializer.Meta.fields,
            "input_data",
            "context",
            "output",
            "attempts",
            "metadata",
            "cancel_requested_at",
            "idempotency_key",
        )
        read_only_fields = fields


class CancelOutputSerializer(serializers.Serializer):
    execution_id = serializers.UUIDField()
    status = serializers.CharField(help_text="The status now: cancelled, or still running while it stops.")
    cancel_requested = serializers.BooleanField()


# -------------------------------------------------------------------------------- stats
class AgentStatsOutputSerializer(serializers.Serializer):
    agent = serializers.CharField(help_text="The agent's slug.")
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    running = serializers.IntegerField()
    pending = serializers.IntegerField()
    success_rate = serializers.FloatField(
        allow_null=True, help_text="completed / finished; null before any run."
    )
    avg_execution_time = serializers.FloatField(allow_null=True)
    p50_execution_time = serializers.FloatField(
        allow_null=True,
        help_text="Seconds, over completed runs. Exact up to 20,000 completed runs; beyond, from a latency "
        "histogram and within 5.9 % of the exact value.",
    )
    p95_execution_time = serializers.FloatField(
        allow_null=True, help_text="Seconds, over completed runs; same precision as p50_execution_time."
    )
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens_used = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False)


# -------------------------------------------------------------------------------- conversations
class ConversationInputSerializer(StrictSerializer):
    agent = StrictCharField(
        required=False,
        allow_null=True,
        max_length=100,
        validators=[SLUG_VALIDATOR],
        help_text="Agent slug or id.",
    )
    title = StrictCharField(required=False, allow_blank=True, max_length=200)


class MessageOutputSerializer(serializers.ModelSerializer):
    execution_id = serializers.UUIDField(allow_null=True)

    class Meta:
        model = Message
        fields = ("position", "role", "content", "tool_calls", "tool_call_id", "execution_id", "created_at")
        read_only_fields = fields


class ConversationListOutputSerializer(serializers.ModelSerializer):
    agent = serializers.SerializerMethodField()
    message_count = serializers.IntegerField()

    class Meta:
        model = Conversation
        fields = ("id", "agent", "title", "summary", "message_count", "created_at", "updated_at")
        read_only_fields = fields

    @extend_schema_field({"type": ["string", "null"], "description": "The agent's slug."})
    def get_agent(self, conversation: Conversation) -> str | None:
        return conversation.agent.agent_id if conversation.agent_id else None


class ConversationDetailOutputSerializer(ConversationListOutputSerializer):
    messages = MessageOutputSerializer(many=True)
    active_execution = serializers.UUIDField(source="active_execution_id", allow_null=True)

    class Meta(ConversationListOutputSerializer.Meta):
        fields = (
            *ConversationListOutputSerializer.Meta.fields,
            "summary_upto",
            "active_execution",
            "messages",
        )
        read_only_fields = fields


# -------------------------------------------------------------------------------- health
class HealthCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField(required=False)


class HealthOutputSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="ok, or degraded when a dependency is down (503).")
    database = HealthCheckSerializer()
    broker = HealthCheckSerializer(allow_null=True, help_text="null when no broker is configured.")
    platforms = serializers.ListField(
        child=serializers.CharField(), help_text="Configured platforms, in order."
    )
