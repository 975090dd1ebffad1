"""Serializers: `*InputSerializer` validates a request, `*OutputSerializer` renders a response (STYLE.md).

`AgentExecutionInputSerializer` / `AgentExecutionOutputSerializer` are the seed's names for the execute
contract. Every input serializer is strict: unknown keys and wrong JSON types are a 400 naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import MaxLengthValidator, RegexValidator
from django.db import models
from django.utils.text import format_lazy
from rest_framework import serializers

from apps.agents.api.fields import (
    SAFE_JSON_REF,
    SAFE_KEYS,
    SafeJSONField,
    SafeJSONObjectField,
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictFloatField,
    StrictIntegerField,
    json_problems,
)
from apps.agents.api.tool_fields import ToolNameField
from apps.agents.models import (
    Agent,
    MessageRole,
)
from apps.agents.schema_policy import check_schema_setting
from apps.agents.services.agents import EDITABLE_FIELDS


class StrictSerializer(serializers.Serializer):
    """Unknown keys are an error, not silently dropped: a typo ("temprature") must not pass unnoticed."""

    rejects_unknown_fields = True

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(str(key) for key in data if key not in writable)
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


# -------------------------------------------------------------------------------- errors
class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text='Path of each bad field -> messages, e.g. {"input_data.task": ["This field is required."]}',
    )


class ErrorEnvelopeSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# -------------------------------------------------------------------------------- auth
class TokenInputSerializer(StrictSerializer):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=1024, trim_whitespace=False, style={"input_type": "password"})


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField()


# -------------------------------------------------------------------------------- agents
class AgentInputSerializer(StrictSerializer, serializers.ModelSerializer):
    """Create (all required fields) and PATCH (`partial=True`). Types and ranges come from the model's fields,
    mapped to strict fields; the service runs full_clean again, so the model stays the one source of rules."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.BooleanField: StrictBooleanField,
        models.FloatField: StrictFloatField,
        models.PositiveIntegerField: StrictIntegerField,
        models.PositiveSmallIntegerField: StrictIntegerField,
        models.JSONField: SafeJSONField,
    }
    serializer_choice_field = StrictChoiceField

    capabilities = serializers.ListField(
        child=StrictCharField(max_length=100), max_length=100, required=False, help_text="Free-form labels."
    )
    tools = serializers.ListField(
        child=ToolNameField(max_length=100),
        max_length=50,
        required=False,
        help_text="Names of the tools the agent may call (allowlist), as GET /api/v1/tools/ lists them: "
        "calculator, current_time, the deploying team's project tools, `server:tool` for MCP tools.",
    )
    output_schema = SafeJSONObjectField(
        required=False, allow_null=True, help_text="JSON Schema the output must match (task agents)."
    )

    class Meta:
        model = Agent
        fields = EDITABLE_FIELDS
        extra_kwargs = {
            "system_prompt": {"trim_whitespace": False},
            "agent_id": {"help_text": "Slug. The built-in catalog's slugs are reserved (400)."},
            "is_shared": {
                "help_text": "Visible to every user. Setting it, or changing a shared agent, takes staff or the "
                "agents.share_agent permission (403 naming the field); the owner may set it to false."
            },
        }

    def validate_output_schema(self, value: Any) -> Any:
        # The schema policy (apps/agents/engine/schema_policy.py); full_clean applies it again in the service.
        try:
            check_schema_setting(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages, code="schema_refused") from None
        return value

    def get_validators(self) -> list[Any]:
        # No UniqueTogether/UniqueValidator queries here: the service's full_clean checks uniqueness once.
        return []

    def build_standard_field(self, field_name: str, model_field: models.Field) -> tuple[Any, dict[str, Any]]:
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        # Keep the model's validators (slug pattern) but drop DRF's UniqueValidator: full_clean checks once.
        kwargs["validators"] = [v for v in kwargs.get("validators", []) if not hasattr(v, "queryset")]
        cap = self._deployment_caps().get(field_name)
        if cap is not None:
            kwargs["max_value"] = min(kwargs.get("max_value", cap), cap)
        return field_class, kwargs

    def _deployment_caps(self) -> dict[str, int]:
        """Deployment limits (README "Budgets and limits") as the fields' maxima, so the schema states them:
        MAX_OUTPUT_TOKENS for every agent; the non-staff ceilings unless the agent's owner (the caller, for
        a new agent) is staff. Without a request (the schema) the non-staff ones apply."""
        caps = {"max_tokens": int(settings.MAX_OUTPUT_TOKENS)}
        request = self.context.get("request")
        owner = getattr(self.instance, "owner", None) or getattr(request, "user", None)
        if not getattr(owner, "is_staff", False):
            caps["max_retries"] = int(settings.NON_STAFF_MAX_RETRIES)
            caps["timeout_seconds"] = int(settings.NON_STAFF_MAX_TIMEOUT_SECONDS)
        return caps

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The model allowlist (MODEL_ALLOWLIST), for non-staff owners: 400 naming `model`."""
        from apps.agents.services.limits import limit_errors

        if "model" in attrs or "preferred_platform" in attrs:
            merged = {
                "model": attrs.get("model", getattr(self.instance, "model", "")),
                "preferred_platform": attrs.get(
                    "preferred_platform", getattr(self.instance, "preferred_platform", "")
                ),
            }
            if "max_retries" in self._deployment_caps():
                errors = limit_errors(_AgentLimitsView(**merged), staff=False)
                if "model" in errors:
                    raise serializers.ValidationError({"model": errors["model"]})
        return attrs


@dataclasses.dataclass(frozen=True)
class _AgentLimitsView:
    """Just what the allowlist check reads; the other limits are the fields' maxima above."""

    model: str
    preferred_platform: str
    max_tokens: int | None = None
    max_retries: int = 0
    timeout_seconds: int = 0


class AgentOutputSerializer(serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    capabilities = serializers.ListField(child=serializers.CharField())
    tools = serializers.ListField(child=serializers.CharField())
    output_schema = serializers.JSONField(allow_null=True)

    class Meta:
        model = Agent
        fields = ("id", *AgentInputSerializer.Meta.fields, "owner", "created_at", "updated_at")
        read_only_fields = fields


# -------------------------------------------------------------------------------- execute
def limit_length(field: serializers.Field, maximum: int) -> None:
    """A max length read from settings when the serializer is built (per request, since DRF deep-copies
    declared fields), so that an override applies at once and the schema shows the real limit."""
    field.max_length = maximum  # type: ignore[attr-defined]
    field.validators.append(_max_length_validator(type(field), maximum))


@functools.lru_cache(maxsize=64)
def _max_length_validator(field_class: type[serializers.Field], maximum: int) -> MaxLengthValidator:
    """One validator per field class and maximum, shared by every request (a validator keeps no state). Built
    per request, each formatted DRF's translatable message: a translation lookup per field, 1.3 % of the
    server's CPU on an execute request (bench/api.py --profile)."""
    template = next(
        klass.default_error_messages["max_length"]
        for klass in field_class.__mro__
        if "max_length" in vars(klass).get("default_error_messages", {})
    )
    # Lazy: formatting the message looks the translation up, and it is only read on an error. Set after
    # __init__, which tests the message's truth and so would format it at once.
    validator = MaxLengthValidator(maximum)
    validator.message = format_lazy(template, max_length=maximum)
    return validator


class SettingsLimitsMixin:
    """`length_limits` (field name -> setting name): max lengths read from settings when the fields are built.

    In get_fields, not __init__: DRF builds (deep-copies) a serializer's fields only when they are first read,
    and a nested serializer that read them in __init__ built them for every request, used or not (the execute
    request's context and history fields, for a request without `context`)."""

    length_limits: dict[str, str] = {}

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()  # type: ignore[misc]
        for name, setting in self.length_limits.items():
            limit_length(fields[name], getattr(settings, setting))
        return fields


# Whitespace-only text is blank; as a pattern it is also in the schema (minLength alone would allow "  ").
# Python's whitespace (str.strip, engine/inputs.py) spelled out: `\S` means another set in the schema's
# regex dialect (ECMA-262 counts U+FEFF as space, Python U+0085 and U+001C-U+001F).
WHITESPACE = r"\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = RegexValidator(f"[^{WHITESPACE}]", message="This field may not be blank.", code="blank")

OUTPUT_FORMAT_HELP = "How the answer should be shaped, e.g. text, markdown, code, json."


class ExecutionInputDataSerializer(SettingsLimitsMixin, serializers.Serializer):
    """`task` (or `message`, for conversational agents) and an optional `output_format`. Any other key is
    passed to the prompt as labelled context; its value may be any JSON, checked for NUL bytes, lone
    surrogates and depth (apps/agents/engine/inputs.py applies the same rules)."""

    task = StrictCharField(
        required=False,
        validators=[NOT_BLANK],
        help_text="What the agent should do (at most MAX_TASK_CHARS). Required unless `message` is given.",
    )
    message = StrictCharField(
        required=False, validators=[NOT_BLANK], help_text="Alternative to `task` for conversational agents."
    )
    # The schema's way of saying "task or message" (apps/agents/api/schema.py merges this in).
    schema_overrides = {
        "anyOf": [{"required": ["task"]}, {"required": ["message"]}],
        # Any other key is extra context for the prompt: JSON that json_problems() accepts.
        "propertyNames": SAFE_KEYS,
        "additionalProperties": SAFE_JSON_REF,
    }
    output_format = StrictCharField(
        required=False, allow_blank=True, max_length=50, help_text=OUTPUT_FORMAT_HELP
    )

    length_limits = {"task": "MAX_TASK_CHARS", "message": "MAX_TASK_CHARS"}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        validated = super().to_internal_value(data)
        text_key = "task" if "task" in validated or "message" not in validated else "message"
        text = validated.get(text_key)
        if text is None:
            raise serializers.ValidationError({"task": ["This field is required."]}, code="required")
        if not text.strip():
            raise serializers.ValidationError({text_key: ["This field may not be blank."]}, code="blank")
        extra = {key: value for key, value in data.items() if key not in self.fields}
        problems = json_problems(extra)
        if problems:
            raise serializers.ValidationError(problems)
        return {**extra, **validated}


class HistoryMessageSerializer(SettingsLimitsMixin, StrictSerializer):
    role = StrictChoiceField(choices=[MessageRole.USER, MessageRole.ASSISTANT])
    content = StrictCharField(allow_blank=True, trim_whitespace=False)

    length_limits = {"content": "MAX_TASK_CHARS"}


class ExecutionContextSerializer(SettingsLimitsMixin, StrictSerializer):
    conversation_history = serializers.ListField(
        child=HistoryMessageSerializer(),
        required=False,
        help_text="Earlier turns (at most MAX_HISTORY_MESSAGES).",
    )
    conversation_id = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="Continue one of your stored conversations (its messages are the history).",
    )
    conversation_summary = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    metadata = SafeJSONObjectField(required=False, help_text="Free JSON object, recorded with the run.")

    length_limits = {"conversation_history": "MAX_HISTORY_MESSAGES", "conversation_summary": "MAX_TASK_CHARS"}

    schema_overrides = {
        "not": {
            "required": ["conversation_id", "conversation_history"],
            "properties": {"conversation_id": {"type": "string"}, "conversation_history": {"minItems": 1}},
        }
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("conversation_id") and attrs.get("conversation_history"):
            raise serializers.ValidationError(
                {
                    "conversation_history": [
                        "Cannot be combined with conversation_id (the conversation is the history)."
                    ]
                }
            )
        return attrs


class AgentExecutionInputSerializer(StrictSerializer):
    """The seed's execute request."""

    input_data = ExecutionInputDataSerializer()
    context = ExecutionContextSerializer(required=False)
    stream = StrictBooleanField(
        required=False, default=False, help_text="Answer text/event-stream (also: Accept: text/event-stream)."
    )
    background = StrictBooleanField(
        required=False,
        default=False,
        help_text="Queue the run; answer 202 with links to poll, cancel, stream.",
    )

    schema_overrides = {
        "not": {
            "required": ["stream", "background"],
            "properties": {"stream": {"enum": [True]}, "background": {"enum": [True]}},
        }
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("stream") and attrs.get("background"):
            raise serializers.ValidationError(
                {
                    "background": [
                        "Choose stream or background, not both "
                        "(stream a background run from its events link)."
                    ]
                }
            )
        return attrs


class ExecutionErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="provider_error, timeout, cancelled_by_user, invalid_output, ...")
    message = serializers.CharField()


class AgentExecutionOutputSerializer(serializers.Serializer):
    """The seed's execute response (apps.agents.engine.serialize.result_body)."""

    success = serializers.BooleanField()
    output = serializers.JSONField(
        allow_null=True, help_text="Text, or the parsed JSON for structured agents."
    )
    execution_id = serializers.UUIDField(allow_null=True)
    tokens_used = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.FloatField(help_text="US dollars.")
    execution_time = serializers.FloatField(help_text="Seconds.")
    platform_used = serializers.CharField(allow_null=True)
    model_used = serializers.CharField(allow_null=True)
    metadata = serializers.DictField()
    error = ExecutionErrorSerializer(required=False, help_text="Only when success is false.")


class ExecutionLinksSerializer(serializers.Serializer):
    poll = serializers.URLField()
    cancel = serializers.URLField()
    events = serializers.URLField()


class ExecutionAcceptedSerializer(serializers.Serializer):
    """`background: true`: the run is queued."""

    execution_id = serializers.UUIDField()
    status = serializers.CharField()
    links = ExecutionLinksSerializer()
