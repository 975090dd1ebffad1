"""Strict JSON fields: a JSON API takes `true`, not "true"; 5, not "5". DRF's fields coerce strings (and a
CharField turns 123 into "123"), so a client sending the wrong type would get a silently different request
instead of a 400 naming the field. These reject anything that is not already the right JSON type.

`SafeJSONField` accepts free-form JSON but walks it: no NUL bytes or lone surrogates in any key or string
(PostgreSQL rejects both, which would otherwise be a 500), and a bounded nesting depth.
"""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

MAX_JSON_DEPTH = 32


class StrictCharField(serializers.CharField):
    """Only a JSON string, taken as sent. (DRF's CharField already refuses NUL bytes and lone surrogates.)

    No whitespace trimming: trimming would turn "  " into a blank that the schema (minLength 1) allows."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=str(data)[:100])
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=str(data)[:100])
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer. As in JSON Schema (and so OpenAPI 3.1), 60.0 is the integer 60; 1.5 is not one."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, float) and data.is_integer():
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


def json_problems(value: Any, path: str = "", depth: int = 0) -> dict[str, str]:
    """{"a.b.0": "why"} for every key or string in `value` that a database or a provider would choke on."""
    where = path or "value"
    if depth > MAX_JSON_DEPTH:
        return {where: f"Nested deeper than {MAX_JSON_DEPTH} levels."}
    problems: dict[str, str] = {}
    if isinstance(value, str):
        if "\x00" in value:
            problems[where] = "Null characters are not allowed."
        elif any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
            problems[where] = "Invalid unicode: lone surrogate characters are not allowed."
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            key_problem = json_problems(str(key), child, depth + 1)
            problems.update(key_problem or json_problems(item, child, depth + 1))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems.update(json_problems(item, f"{path}[{index}]" if path else f"[{index}]", depth + 1))
    elif isinstance(value, float) and not math.isfinite(value):
        problems[where] = "Not a finite number."
    return problems


# The schema of what json_problems() lets through: any JSON without a NUL in a string or a key (a lone
# surrogate is refused too, but a pattern cannot say so portably). A component of its own, because it is
# recursive; added to the document by apps.agents.api.schema.postprocess.
NO_NUL_PATTERN = r"^[^\u0000]*$"
SAFE_JSON_REF = {"$ref": "#/components/schemas/SafeJSON"}
SAFE_KEYS = {"pattern": NO_NUL_PATTERN}
SAFE_JSON_SCHEMA = {
    "description": "Any JSON value without a NUL character in a string or an object key.",
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "array", "items": SAFE_JSON_REF},
        {"type": "object", "propertyNames": SAFE_KEYS, "additionalProperties": SAFE_JSON_REF},
    ],
}


class SafeJSONField(serializers.JSONField):
    """Free-form JSON, optionally constrained to an object (`object_only`), checked by `json_problems`."""

    default_error_messages = {"not_object": "Must be a JSON object."}

    def __init__(self, *, object_only: bool = False, **kwargs: Any) -> None:
        self.object_only = object_only
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        data = super().to_internal_value(data)
        if self.object_only and not isinstance(data, dict):
            self.fail("not_object")
        problems = json_problems(data)
        if problems:
            raise serializers.ValidationError(problems)
        return data


@extend_schema_field(OpenApiTypes.OBJECT)
class SafeJSONObjectField(SafeJSONField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(object_only=True, **kwargs)


def check_text(value: str) -> str | None:
    """Why `value` (a header or query value, not parsed by a serializer) is unacceptable, or None."""
    return json_problems(value).get("value")
