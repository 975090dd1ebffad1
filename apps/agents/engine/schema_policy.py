"""The schema policy: a JSON Schema from a user is data, never a fetch (ARCHITECTURE.md, security rules).

One module for every place a schema comes in: an agent's `output_schema` at create and update (the API and
the model's validator), the catalog loader, a stored agent at run time (a row written before this policy, or
by hand, is refused, never executed), and any per-request schema. Pure Python, no Django: the caps come in
as `SchemaLimits` (the service layer builds them from settings, apps/agents/services/schema_policy.py).

What a schema may not do, and why:
- Reach anything outside itself. jsonschema's default resolver fetches `http(s)://` references (no timeout)
  and reads `file:` ones, so a `$ref` made the server GET a URL or return a local file. Validators built here
  use a `referencing` Registry whose retrieve refuses everything; only `#` and `#/...` pointers into the same
  document are accepted. `$id`, `$anchor`, `$dynamicRef`/`$dynamicAnchor` and the draft-2019 recursive
  keywords change what a reference resolves against, so they are refused outright.
- Run a regular expression that backtracks. `pattern` and `patternProperties` (and the patternProperties
  that additionalProperties consults) run on RE2, which is linear in the input; a pattern RE2 cannot compile
  (backreferences, lookaround) is refused when the schema is saved.
- Ask for huge work. The schema's size, nesting depth, number of declared properties, and the numeric
  keywords (minLength, maxItems, ...) are capped: the local grammar builder expands `minItems: 10**9` into
  memory, and validation walks every declared property.
Validation of a model's answer runs in a worker thread with a time budget (`validate_in_thread`), so even a
legal but slow validation never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import re2
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import NoSuchResource

#: Numeric keywords whose value is a count of characters, items or properties that validators and the local
#: grammar builder may turn into work or memory proportional to it.
COUNT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
#: Keywords that move the base URI or resolve dynamically: the ways a reference can leave the document.
FORBIDDEN_KEYWORDS = (
    "$id",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
)
#: Dialects a schema may name. Drafts 3 and 4 use a bare `id` for the base URI, which is also a common
#: property name; they are not accepted. No `$schema` means draft 2020-12.
ALLOWED_DIALECTS = frozenset(
    uri.rstrip("#")
    for uri in (
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-06/schema#",
    )
)


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    """Caps on a user's JSON Schema (settings: SCHEMA_MAX_BYTES, ...; see README "Security")."""

    max_bytes: int = 32_768
    max_depth: int = 24
    max_properties: int = 256
    max_count: int = 4_096
    max_pattern_chars: int = 512
    validation_seconds: float = 2.0


class SchemaRefused(ValueError):
    """The schema breaks the policy. `where` is the JSON path inside the schema ("" for the whole)."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where else reason)


class ValidationTimeout(Exception):
    """Validating an answer took longer than `SchemaLimits.validation_seconds`."""


# ------------------------------------------------------------------------------------------ regexes
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is our 400, not a line on stderr
_RE2_OPTIONS.max_mem = 1 << 20  # a pattern whose automaton needs more (x{1000}{1000}) does not compile


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for a schema pattern; re2.error when RE2 cannot run it in linear time."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _check_pattern(pattern: object, where: str, limits: SchemaLimits) -> None:
    if not isinstance(pattern, str):
        raise SchemaRefused("a pattern must be a string", where)
    if len(pattern) > limits.max_pattern_chars:
        raise SchemaRefused(f"a pattern may have at most {limits.max_pattern_chars} characters", where)
    try:
        compile_pattern(pattern)
    except re2.error:
        raise SchemaRefused(
            "this pattern needs backtracking (backreferences, lookaround) or is too large; "
            "only patterns that run in linear time (RE2 syntax) are accepted",
            where,
        ) from None


# ------------------------------------------------------------------------------------------ the check
def _walk(schema: Any, limits: SchemaLimits) -> Iterator[tuple[str, int, Any]]:
    """Every JSON value of the document with its path and depth, iteratively (no recursion to exhaust)."""
    stack: list[tuple[str, int, Any]] = [("", 0, schema)]
    while stack:
        where, depth, node = stack.pop()
        if depth > limits.max_depth:
            raise SchemaRefused(f"nested deeper than {limits.max_depth} levels", where)
        yield where, depth, node
        if isinstance(node, dict):
            stack.extend((f"{where}.{key}" if where else str(key), depth + 1, v) for key, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", depth + 1, v) for i, v in enumerate(node))


def check_schema(schema: Any, limits: SchemaLimits) -> None:
    """Raise SchemaRefused unless `schema` is a JSON Schema object this policy accepts.

    Every object anywhere in the document is checked, not only the ones in schema positions: a `$ref` may
    point at any location (`#/x/y`), so a reference hidden under an unknown keyword counts too.
    """
    if not isinstance(schema, dict):
        raise SchemaRefused("must be a JSON Schema object")
    properties = 0
    has_pattern_properties = has_unevaluated_properties = False
    for where, _depth, node in _walk(schema, limits):
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and not (ref == "#" or ref.startswith("#/")):
            raise SchemaRefused(
                "only references inside the schema (#/$defs/...) are allowed; nothing is fetched or read",
                _join(where, "$ref"),
            )
        for keyword in FORBIDDEN_KEYWORDS:
            if isinstance(node.get(keyword), str):
                raise SchemaRefused(
                    f"{keyword} is not allowed: references resolve only inside the schema",
                    _join(where, keyword),
                )
        if "pattern" in node and isinstance(node["pattern"], str):
            _check_pattern(node["pattern"], _join(where, "pattern"), limits)
        pattern_properties = node.get("patternProperties")
        if isinstance(pattern_properties, dict):
            has_pattern_properties = True
            for pattern in pattern_properties:
                _check_pattern(pattern, _join(where, "patternProperties"), limits)
        if "unevaluatedProperties" in node:
            has_unevaluated_properties = True
        for keyword in COUNT_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limits.max_count:
                raise SchemaRefused(f"may be at most {limits.max_count}", _join(where, keyword))
        declared = node.get("properties")
        if isinstance(declared, dict):
            properties += len(declared)
            if properties > limits.max_properties:
                raise SchemaRefused(f"declares more than {limits.max_properties} properties in all", where)
    if has_pattern_properties and has_unevaluated_properties:
        # jsonschema evaluates patternProperties for unevaluatedProperties with Python's backtracking `re`.
        raise SchemaRefused("unevaluatedProperties cannot be combined with patternProperties")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_bytes:
        raise SchemaRefused(f"is {size} bytes; at most {limits.max_bytes} are allowed")
    dialect = schema.get("$schema")
    if dialect is not None and (not isinstance(dialect, str) or dialect.rstrip("#") not in ALLOWED_DIALECTS):
        raise SchemaRefused("use draft 2020-12 (or 2019-09, 07, 06)", "$schema")
    try:
        _validator_class(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaRefused(f"not a valid JSON Schema: {exc.message}", _path(exc.absolute_path)) from None
    # A reference loop that consumes nothing of the value ({"$ref": "#"}, allOf cycles) recurses until
    # RecursionError on every answer; trying one value of each type finds the common ones now, not later.
    # The same trial, under a deadline, finds schemas whose references fan out exponentially (anyOf of two
    # references to a definition that is anyOf of two references to ..., thirty levels in a few KB).
    validator = _re2_class(_validator_class(schema))(schema, registry=NO_RETRIEVAL_REGISTRY)
    try:
        with _deadline(min(CHECK_SECONDS, limits.validation_seconds)):
            for sample in _SAMPLES:
                for _error in validator.iter_errors(sample):
                    pass
    except RecursionError:
        raise SchemaRefused(_LOOP) from None
    except ValidationTimeout:
        raise SchemaRefused("validating even an empty value against this schema takes too long") from None


_SAMPLES: tuple[Any, ...] = (None, True, 0, 0.5, "", [], {})
_LOOP = "the schema refers to itself in a loop that never reaches into the value"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _path(parts: Any) -> str:
    return ".".join(str(part) for part in parts)


# ------------------------------------------------------------------------------------------ validators
def _refuse_retrieval(uri: str) -> Any:
    # Never reached for a schema that passed check_schema; here so that nothing can ever fetch or read.
    raise NoSuchResource(ref=uri)


#: Resolves only what is inside the schema being validated (and the dialects' own meta-schemas).
NO_RETRIEVAL_REGISTRY: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(
    validator: Any, pattern_properties: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        program = compile_pattern(pattern)
        for key, value in instance.items():
            if program.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _re2_additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    # jsonschema's own keyword matches patternProperties with `re`; this one with RE2, same messages.
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    programs = [compile_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [key for key in instance if key not in declared and not any(p.search(key) for p in programs)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(repr(extra) for extra in sorted(extras, key=str))
        verb = "was" if len(extras) == 1 else "were"
        yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _validator_class(schema: Mapping[str, Any]) -> Any:
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)


#: Seconds check_schema spends at most on its trial validations.
CHECK_SECONDS = 0.5
_local = threading.local()


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Every keyword evaluated in this thread meanwhile raises ValidationTimeout once `seconds` have passed:
    a validation past its budget stops in its worker thread instead of running on unseen."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + seconds
    _local.seconds = seconds
    try:
        yield
    finally:
        _local.deadline = previous


def _timed(keyword: Any) -> Any:
    def evaluate(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
        deadline = getattr(_local, "deadline", None)
        if deadline is not None and time.monotonic() > deadline:
            raise ValidationTimeout(f"validating the output took longer than {_local.seconds:g} s")
        return keyword(validator, value, instance, schema) or ()

    return evaluate


@functools.lru_cache(maxsize=32)
def _re2_class(base: Any) -> Any:
    keywords = {
        **base.VALIDATORS,
        "pattern": _re2_pattern,
        "patternProperties": _re2_pattern_properties,
        "additionalProperties": _re2_additional_properties,
    }
    # Only keywords that descend into subschemas can make the work grow beyond the value's size; the clock is
    # read there (leaf keywords like `type` stay as fast as jsonschema's own).
    return jsonschema.validators.extend(
        base, {name: _timed(fn) if name in _APPLICATORS else fn for name, fn in keywords.items()}
    )


_APPLICATORS = frozenset(
    {
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "items",
        "additionalItems",
        "prefixItems",
        "contains",
        "properties",
        "patternProperties",
        "additionalProperties",
        "propertyNames",
        "dependentSchemas",
        "dependencies",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)


@functools.lru_cache(maxsize=256)
def _cached_validator(schema_json: str, limits: SchemaLimits) -> Validator:
    schema = json.loads(schema_json)
    check_schema(schema, limits)
    return _re2_class(_validator_class(schema))(schema, registry=NO_RETRIEVAL_REGISTRY)


def build_validator(schema: Mapping[str, Any], limits: SchemaLimits) -> Validator:
    """A validator for a schema that passes the policy (SchemaRefused otherwise); cached by content."""
    return _cached_validator(json.dumps(schema, sort_keys=True), limits)


def first_error(value: Any, schema: Mapping[str, Any], limits: SchemaLimits) -> ValidationError | None:
    """The most relevant way `value` fails `schema`, or None, within `limits.validation_seconds`.
    Raises SchemaRefused for a refused schema, ValidationTimeout past the budget."""
    validator = build_validator(schema, limits)
    try:
        with _deadline(limits.validation_seconds):
            return jsonschema.exceptions.best_match(validator.iter_errors(value))
    except RecursionError:  # a loop only some values reach (check_schema finds those every value reaches)
        raise SchemaRefused(_LOOP) from None


async def validate_in_thread(
    value: Any, schema: Mapping[str, Any], limits: SchemaLimits
) -> ValidationError | None:
    """first_error() in a worker thread, within `limits.validation_seconds` (ValidationTimeout after).

    The thread cannot be stopped, but with RE2 and the caps it finishes; the budget keeps a run from waiting
    on it, and the event loop never runs it."""
    try:
        # The thread stops itself at the budget (_deadline); the wait's own timeout, a little later, is for
        # a thread that cannot even start in time.
        return await asyncio.wait_for(
            asyncio.to_thread(first_error, value, schema, limits), timeout=limits.validation_seconds + 1.0
        )
    except TimeoutError:
        raise ValidationTimeout(
            f"validating the output took longer than {limits.validation_seconds:g} s"
        ) from None
