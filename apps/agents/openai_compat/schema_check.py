"""The check a client-given JSON Schema passes before it is used (response formats, tool parameters).

One function on purpose: the "untrusted input" issue's schema policy (apps/agents/schema_policy.py) replaces
its body on merge. Until then: the schema must be valid under its own meta-schema (jsonschema's check) and
a JSON object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema

from apps.agents.openai_compat.errors import invalid


def check_request_schema(schema: Any, *, param: str) -> dict[str, Any]:
    """The schema, if acceptable; otherwise OpenAIError 400 naming `param`."""
    if not isinstance(schema, Mapping):
        raise invalid("must be a JSON Schema object", param=param, code="invalid_type")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise invalid(f"not a valid JSON Schema at {where}: {exc.message}", param=param) from None
    return dict(schema)
