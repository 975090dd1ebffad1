"""The check a client-given JSON Schema passes before it is used (response formats, tool parameters): the
deployment's schema policy (apps/agents/schema_policy.py), the same as for an agent's output_schema: data,
never a fetch; local references only; caps on size, depth and numeric keywords; RE2 patterns.

Clients send the same schemas with every request (a tool list, a response model): verdicts are cached by the
schema's canonical JSON and the limits in force, so a repeated schema costs one json.dumps.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from apps.agents.engine.schema_policy import SchemaLimits, SchemaRefused, check_schema
from apps.agents.openai_compat.errors import invalid
from apps.agents.schema_policy import refusal_text, schema_limits


@functools.lru_cache(maxsize=1024)
def _schema_problem(canonical: str, limits: SchemaLimits) -> str | None:
    try:
        check_schema(json.loads(canonical), limits)
    except SchemaRefused as exc:
        return refusal_text(exc)
    return None


def check_request_schema(schema: Any, *, param: str) -> dict[str, Any]:
    """The schema, if acceptable; otherwise OpenAIError 400 naming `param`."""
    if not isinstance(schema, Mapping):
        raise invalid("must be a JSON Schema object", param=param, code="invalid_type")
    problem = _schema_problem(json.dumps(schema, sort_keys=True), schema_limits())
    if problem is not None:
        raise invalid(problem, param=param)
    return dict(schema)
