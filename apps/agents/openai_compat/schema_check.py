"""The check a client-given JSON Schema passes before it is used (response formats, tool parameters).

One function on purpose: the "untrusted input" issue's schema policy (apps/agents/schema_policy.py) replaces
its body on merge. Until then: the schema must be a JSON object valid under its own meta-schema
(jsonschema's check_schema).

jsonschema's meta-schema check costs about 2 ms per schema (bench/openai_parse.py), and clients send the same
schemas with every request (a tool list, a response model): verdicts are cached by the schema's canonical
JSON, so a repeated schema costs one json.dumps.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from apps.agents.openai_compat.errors import invalid


@functools.lru_cache(maxsize=1024)
def _schema_problem(canonical: str) -> str | None:
    schema = json.loads(canonical)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"not a valid JSON Schema at {where}: {exc.message}"
    return None


def check_request_schema(schema: Any, *, param: str) -> dict[str, Any]:
    """The schema, if acceptable; otherwise OpenAIError 400 naming `param`."""
    if not isinstance(schema, Mapping):
        raise invalid("must be a JSON Schema object", param=param, code="invalid_type")
    problem = _schema_problem(json.dumps(schema, sort_keys=True))
    if problem is not None:
        raise invalid(problem, param=param)
    return dict(schema)
