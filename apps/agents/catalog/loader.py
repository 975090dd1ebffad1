"""Load and validate the catalog files (one YAML file per agent, named `<agent_id>.yaml`).

Validation is strict because the files are code in disguise: an unknown key, a wrong type, a duplicated key
or an invalid value fails with the file name and the field, at load time rather than when a user runs the
agent. Field rules (slug format, temperature range, choices, lengths, JSON Schema validity) are the `Agent`
model's own validators, run through `clean_fields()` (the output schema: the schema policy, as for any
user's agent); only rules that are specific to shipped agents live
here (file name = slug, capability format, built-in tool names, a portable output schema, a valid example).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ValidationError

from apps.agents.engine.schema_policy import SchemaRefused, first_error
from apps.agents.engine.tools import BUILTIN_TOOLS
from apps.agents.models import AGENT_CONFIG_FIELDS, Agent
from apps.agents.schema_policy import refusal_text, schema_limits

CATALOG_DIR = Path(__file__).resolve().parent

#: The Agent fields a catalog entry sets. seed_agents writes exactly these and compares exactly these to
#: detect a user's edit; everything else on the row (is_active, owner, ...) is the operator's.
MANAGED_FIELDS: tuple[str, ...] = ("name", *AGENT_CONFIG_FIELDS, "is_shared")

REQUIRED_KEYS = ("agent_id", "name", "description", "system_prompt", "capabilities")
# Keys a file may set; a key missing from the file takes the Agent model field's default.
_STR_KEYS = ("agent_id", "name", "description", "system_prompt", "agent_type", "preferred_platform", "model")
_LIST_KEYS = ("capabilities", "tools")
_INT_KEYS = ("timeout_seconds", "max_retries", "history_window", "max_tool_calls")
ALLOWED_KEYS = frozenset(
    (*_STR_KEYS, *_LIST_KEYS, *_INT_KEYS, "temperature", "max_tokens", "output_schema", "example")
)

CAPABILITY_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
MAX_DESCRIPTION_CHARS = 200
BUILTIN_TOOL_NAMES = frozenset(tool.name for tool in BUILTIN_TOOLS)

# JSON Schema keywords that OpenAI, Anthropic and Gemini structured output all accept and that llama.cpp's
# grammar converter understands (or, for minimum/maximum/description, safely ignores: the engine validates
# the parsed output against the full schema anyway). oneOf, pattern, format or string lengths would either
# fail on some platform or blow up the local grammar, so shipped agents do not use them. `$ref` is allowed
# only as a whole node pointing at the root's `$defs` ("#/$defs/name"): it keeps a repeated shape (the Code
# Reviewer's ten criteria) from being spelled out, and sent in every prompt, ten times.
PORTABLE_SCHEMA_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "description",
    }
)
_SCHEMA_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


class CatalogError(ValueError):
    """A catalog file is invalid. `field` is the offending key (dotted for nested places), if any."""

    def __init__(self, path: Path, field: str | None, message: str) -> None:
        self.path = path
        self.field = field
        self.message = message
        super().__init__(f"{path.name}: {field}: {message}" if field else f"{path.name}: {message}")


@dataclass(frozen=True, slots=True)
class CatalogExample:
    """A sample call: `input` is an execute request's input_data; `output` what a good answer looks like
    (for structured agents it must validate against the output schema; text agents may leave it out)."""

    input: dict[str, Any]
    output: Any = None


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    agent_id: str
    name: str
    description: str
    system_prompt: str
    capabilities: tuple[str, ...]
    agent_type: str
    temperature: float | None
    output_schema: dict[str, Any] | None
    tools: tuple[str, ...]
    preferred_platform: str
    model: str
    max_tokens: int | None
    timeout_seconds: int
    max_retries: int
    history_window: int
    max_tool_calls: int
    example: CatalogExample | None = None
    source: Path = field(default=CATALOG_DIR, compare=False, repr=False)

    def agent_values(self) -> dict[str, Any]:
        """The managed Agent field values, JSON-shaped (lists, not tuples) and safe to hand to the ORM."""
        values: dict[str, Any] = {name: getattr(self, name) for name in MANAGED_FIELDS if name != "is_shared"}
        values["capabilities"] = list(self.capabilities)
        values["tools"] = list(self.tools)
        values["output_schema"] = copy.deepcopy(self.output_schema)
        values["is_shared"] = True
        return values


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; in a catalog file that hides a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_catalog(directory: Path = CATALOG_DIR) -> tuple[CatalogEntry, ...]:
    """Every `*.yaml` in `directory`, validated, sorted by agent_id; CatalogError at the first problem."""
    entries = tuple(sorted((load_entry(path) for path in sorted(directory.glob("*.yaml"))), key=_slug))
    names: dict[str, Path] = {}
    for entry in entries:
        if entry.name in names:
            other = names[entry.name].name
            raise CatalogError(entry.source, "name", f"{entry.name!r} is also used by {other}")
        names[entry.name] = entry.source
    return entries


def _slug(entry: CatalogEntry) -> str:
    return entry.agent_id


def load_entry(path: Path) -> CatalogEntry:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CatalogError(path, None, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(path, None, "must be a mapping of agent fields")
    unknown = sorted(str(key) for key in data if key not in ALLOWED_KEYS)
    if unknown:
        raise CatalogError(path, unknown[0], f"unknown field; allowed: {', '.join(sorted(ALLOWED_KEYS))}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise CatalogError(path, key, "is required")

    values = {key: _typed(path, key, data.get(key, _default(key))) for key in ALLOWED_KEYS - {"example"}}
    _check_model_rules(path, values)
    _check_catalog_rules(path, values)
    # The entry's fields are the file's values under the Agent fields' names; lists become tuples (frozen).
    fields = {name: values[name] for name in ("agent_id", "name", *AGENT_CONFIG_FIELDS)}
    fields.update(capabilities=tuple(values["capabilities"]), tools=tuple(values["tools"]))
    entry = CatalogEntry(
        **fields, example=_example(path, data.get("example"), values["output_schema"]), source=path
    )
    try:  # the row stores JSON: a YAML date or set would only fail later, inside the database layer
        json.dumps(entry.agent_values())
    except (TypeError, ValueError) as exc:
        raise CatalogError(path, None, f"not JSON-serialisable: {exc}") from exc
    return entry


def _default(key: str) -> Any:
    return Agent._meta.get_field(key).get_default()


def _typed(path: Path, key: str, value: Any) -> Any:
    """Type-check one value. Django's clean_fields would coerce "0.3" or 1.5 silently; a file must say it."""
    if key in _STR_KEYS:
        if not isinstance(value, str):
            raise CatalogError(path, key, f"must be a string, not {type(value).__name__}")
        return str(value).strip()  # str(): a model default may be a TextChoices member
    if key in _LIST_KEYS:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise CatalogError(path, key, "must be a list of strings")
        return list(value)
    if key in _INT_KEYS or key == "max_tokens":
        if value is None and key == "max_tokens":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise CatalogError(path, key, "must be an integer")
        return value
    if key == "temperature":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogError(path, key, "must be a number")
        return float(value)  # YAML `1` is an int; the row holds a float, and the seed hash must match it
    if key == "output_schema":
        if value is not None and not isinstance(value, dict):
            raise CatalogError(path, key, "must be a JSON Schema object")
        return value
    raise AssertionError(f"no type rule for {key}")  # pragma: no cover - ALLOWED_KEYS and the rules drifted


def _check_catalog_rules(path: Path, values: Mapping[str, Any]) -> None:
    if path.stem != values["agent_id"]:
        raise CatalogError(path, "agent_id", f"{values['agent_id']!r} must match the file name {path.stem!r}")
    description = values["description"]
    if not description or "\n" in description or len(description) > MAX_DESCRIPTION_CHARS:
        limit = MAX_DESCRIPTION_CHARS
        raise CatalogError(path, "description", f"must be one non-empty line of at most {limit} characters")
    if not values["system_prompt"].strip():
        raise CatalogError(path, "system_prompt", "must not be empty")
    capabilities = values["capabilities"]
    if not capabilities:
        raise CatalogError(path, "capabilities", "must list at least one capability")
    for capability in capabilities:
        if not CAPABILITY_RE.match(capability):
            raise CatalogError(path, "capabilities", f"{capability!r} is not UPPER_SNAKE_CASE")
    if len(set(capabilities)) != len(capabilities):
        raise CatalogError(path, "capabilities", "lists a capability twice")
    for tool in values["tools"]:
        if tool not in BUILTIN_TOOL_NAMES:
            known = ", ".join(sorted(BUILTIN_TOOL_NAMES))
            raise CatalogError(path, "tools", f"{tool!r} is not a built-in tool ({known})")
    if values["output_schema"] is not None:
        if values["output_schema"].get("type") != "object":
            raise CatalogError(path, "output_schema", "the root must be an object schema")
        root = dict(values["output_schema"])
        definitions = root.pop("$defs", {})
        if not isinstance(definitions, dict):
            raise CatalogError(path, "output_schema.$defs", "must be a mapping of named schemas")
        _check_portable_schema(path, root, "output_schema", definitions)
        for name, definition in definitions.items():
            _check_portable_schema(path, definition, f"output_schema.$defs.{name}", definitions)


def _check_portable_schema(path: Path, schema: Any, where: str, definitions: Mapping[str, Any]) -> None:
    if not isinstance(schema, dict):
        raise CatalogError(path, where, "must be a schema object")
    if "$ref" in schema:
        ref = schema["$ref"]
        target = ref.removeprefix("#/$defs/") if isinstance(ref, str) else None
        if len(schema) != 1 or target is None or target == ref or target not in definitions:
            raise CatalogError(path, where, "a $ref must stand alone and name one of the root's $defs")
        return
    unsupported = sorted(set(schema) - PORTABLE_SCHEMA_KEYWORDS)
    if unsupported:
        raise CatalogError(path, where, f"keyword {unsupported[0]!r} is not portable to every platform")
    kind = schema.get("type")
    if kind not in _SCHEMA_TYPES:
        raise CatalogError(path, where, f"needs a single 'type' out of {', '.join(sorted(_SCHEMA_TYPES))}")
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise CatalogError(path, where, "an object must declare its properties")
        # The local grammar never emits undeclared keys; saying so keeps validation and generation in step.
        if schema.get("additionalProperties") is not False:
            raise CatalogError(path, where, "an object must set additionalProperties: false")
        missing = sorted(set(schema.get("required", [])) - set(properties))
        if missing:
            raise CatalogError(path, where, f"requires undeclared property {missing[0]!r}")
        for name, subschema in properties.items():
            _check_portable_schema(path, subschema, f"{where}.properties.{name}", definitions)
    elif kind == "array":
        _check_portable_schema(path, schema.get("items"), f"{where}.items", definitions)


def _check_model_rules(path: Path, values: Mapping[str, Any]) -> None:
    """The Agent model's own validators: slug format, choices, ranges, lengths, JSON Schema validity."""
    agent = Agent(**{key: values[key] for key in ALLOWED_KEYS - {"example"}}, is_shared=True)
    try:
        agent.clean_fields()
        agent.clean()
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        key = sorted(errors)[0]
        raise CatalogError(path, None if key == "__all__" else key, "; ".join(errors[key])) from exc


def _example(path: Path, raw: Any, schema: dict[str, Any] | None) -> CatalogExample | None:
    if raw is None:
        if schema is not None:
            raise CatalogError(path, "example", "is required for an agent with an output schema")
        return None
    if not isinstance(raw, dict) or set(raw) - {"input", "output"}:
        raise CatalogError(path, "example", "must be a mapping with 'input' and optionally 'output'")
    example_input = raw.get("input")
    if not isinstance(example_input, dict) or not isinstance(example_input.get("task"), str):
        raise CatalogError(path, "example.input", "must be an input_data mapping with a 'task' string")
    output = raw.get("output")
    if schema is not None:
        try:
            error = first_error(output, schema, schema_limits())
        except SchemaRefused as exc:  # _check_model_rules reports it first; here for a direct caller
            raise CatalogError(path, "output_schema", refusal_text(exc)) from None
        if error is not None:
            place = "/".join(str(part) for part in error.absolute_path) or "(root)"
            message = f"does not match output_schema at {place}: {error.message}"
            raise CatalogError(path, "example.output", message)
    elif output is not None and not isinstance(output, str):
        raise CatalogError(path, "example.output", "must be text for an agent without an output schema")
    try:
        json.dumps(example_input)
        json.dumps(output)
    except (TypeError, ValueError) as exc:
        raise CatalogError(path, "example", f"not JSON-serialisable: {exc}") from exc
    return CatalogExample(input=example_input, output=output)
