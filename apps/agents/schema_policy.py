"""The schema policy with this deployment's limits: the thin settings adapter over the pure
apps/agents/engine/schema_policy.py (the engine imports nothing from Django).

Used by the Agent model's validator (so full_clean, the API, the admin and the catalog loader all apply
it), by the API serializer (a 400 naming the field before any work), and by prepare_run for stored agents.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from apps.agents.engine.schema_policy import SchemaLimits, SchemaRefused, check_schema

__all__ = ["SchemaRefused", "check_schema_setting", "refusal_text", "schema_limits"]


def schema_limits() -> SchemaLimits:
    """The caps from settings, read per call so that an override applies at once (they are six lookups)."""
    return SchemaLimits(
        max_bytes=int(settings.SCHEMA_MAX_BYTES),
        max_depth=int(settings.SCHEMA_MAX_DEPTH),
        max_properties=int(settings.SCHEMA_MAX_PROPERTIES),
        max_count=int(settings.SCHEMA_MAX_COUNT),
        max_pattern_chars=int(settings.SCHEMA_MAX_PATTERN_CHARS),
        validation_seconds=float(settings.SCHEMA_VALIDATION_SECONDS),
    )


def refusal_text(exc: SchemaRefused) -> str:
    """ "at properties.a.pattern: why" (the place inside the schema first, as the client needs it)."""
    return f"at {exc.where}: {exc.reason}" if exc.where else exc.reason


def check_schema_setting(value: Any) -> None:
    """Django validator form: ValidationError(code="schema_refused") when the policy refuses `value`."""
    if value in (None, {}):
        return
    try:
        check_schema(value, schema_limits())
    except SchemaRefused as exc:
        raise ValidationError(refusal_text(exc), code="schema_refused") from None
