"""The llama.cpp grammar for a JSON Schema on the local model, and the token budget that goes with it.

A small model writes until the grammar lets it stop: a string without `maxLength` may run for the whole
context window, and an array without `maxItems` may hold items forever. So the grammar is built from a
*capped copy* of the schema, used only here (the engine still validates the answer against the full schema):

- strings: at most `STRING_CAP` characters (a schema's own smaller `maxLength` wins); `minLength` is capped
  too, so a hostile `minLength: 10**9` cannot make the converter write a billion-item rule;
- arrays: at most `ARRAY_CAP` items, never below the schema's `minItems` (itself capped at `MIN_ITEMS_CAP`);
- integers with `minimum`/`maximum`: the allowed values when the range is small, else a digit-length bound
  (llama-cpp-python's converter ignores numeric ranges);
- properties keep the schema's order (required ones first, as llama.cpp's converter does); nothing is sorted.

`token_budget()` is the most the capped grammar lets the model write, in tokens: the local `max_tokens`
default when the agent sets none, and the output part of the fail-fast time estimate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

STRING_CAP = 120
ARRAY_CAP = 3
#: Tighter caps, tried in order until the grammar's budget fits the token budget asked for.
CAP_STEPS = ((120, 3), (120, 2), (80, 2), (60, 2), (60, 1), (40, 1), (24, 1))
MIN_ITEMS_CAP = 32
#: An integer range with at most this many values becomes an enum of them.
SMALL_RANGE = 64
#: Free-form parts (`{"type": "object"}` without properties, `{}`): what the budget allows for each.
FREE_FORM_CHARS = 600
#: Characters per token of JSON written by SmolLM2's tokenizer. English prose runs ~4, but a small model's
#: JSON is full of digits, codes and punctuation that take a token each: 2.2-3.3 measured on catalog agents.
CHARS_PER_TOKEN = 2.5
#: Used when neither the agent nor the caller sets max_tokens.
DEFAULT_BUDGET = 768
_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_NON_NEGATIVE = '("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? space'
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_MAX_PATTERN_REPEAT = 200


@dataclass(frozen=True, slots=True)
class Caps:
    string: int = STRING_CAP
    array: int = ARRAY_CAP


@dataclass(frozen=True, slots=True)
class JsonGrammar:
    text: str  # GBNF, root rule "root"
    budget: int  # the most tokens this grammar lets the model write (estimated)
    caps: Caps
    #: Tokens of the schema's smallest valid value (empty strings, fewest items): what closing the answer
    #: costs at most. The generation steers to the end once `budget` is spent or time runs short, so this,
    #: not `budget`, is what must fit the deadline.
    floor: int = 0
    #: Whether every value the grammar allows also validates against the full schema. When not (a format,
    #: uniqueItems, a dropped pattern...), the engine may re-ask, so the first answer gets half the time.
    exact: bool = True


def build_steps(schema: Mapping[str, Any]) -> tuple[JsonGrammar, ...]:
    """The grammar of `schema` under each of CAP_STEPS, loosest first (duplicates dropped): the generation
    picks the loosest whose budget fits its token limit and its deadline (`pick`)."""
    steps: list[JsonGrammar] = []
    floor = token_budget(schema, Caps(0, 0))
    exact = is_exact(schema)
    for string, array in CAP_STEPS:
        caps = Caps(string, array)
        budget = token_budget(schema, caps)
        if steps and steps[-1].budget == budget:
            continue
        steps.append(JsonGrammar(grammar_text(schema, caps), budget, caps, floor, exact))
    return tuple(steps)


def pick(steps: tuple[JsonGrammar, ...], limit: int) -> JsonGrammar | None:
    """The loosest grammar whose budget is at most `limit` tokens; None when even the tightest is over."""
    return next((g for g in steps if g.budget <= limit), None)


#: Keywords the grammar does not enforce: a value it allows may still fail validation.
_UNENFORCED = frozenset(
    {
        *("format", "uniqueItems", "multipleOf", "not", "if", "contains", "minProperties", "maxProperties"),
        *("dependentRequired", "dependentSchemas", "dependencies", "patternProperties", "allOf"),
    }
)
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def is_exact(schema: Any, depth: int = 0) -> bool:
    """Whether every value the capped grammar of `schema` allows validates against `schema` itself."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or depth > 32:
        return False
    if _UNENFORCED & schema.keys():
        return False
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        return False
    kind = schema.get("type")
    if kind == "string" and (
        _int(schema.get("minLength"), 0) > STRING_CAP
        or (isinstance(schema.get("pattern"), str) and _pattern_too_big(schema["pattern"]))
    ):
        return False
    if (kind == "array" or "items" in schema) and _int(schema.get("minItems"), 0) > MIN_ITEMS_CAP:
        return False
    if kind == "number" and not _number_rule_exact(schema):
        return False
    children: list[Any] = []
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            children.extend(schema[key])
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), Mapping):
            children.extend(schema[key].values())
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            children.append(schema[key])
    return all(is_exact(child, depth + 1) for child in children)


def _number_rule_exact(schema: Mapping[str, Any]) -> bool:
    bounds = {k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema}
    return not bounds or (bounds == {"minimum"} and schema["minimum"] == 0)


def build(schema: Mapping[str, Any], max_tokens: int | None) -> JsonGrammar:
    """The loosest grammar whose budget fits `max_tokens` (or DEFAULT_BUDGET), else the tightest one."""
    steps = build_steps(schema)
    return pick(steps, max_tokens if max_tokens and max_tokens > 0 else DEFAULT_BUDGET) or steps[-1]


def capped_schema(schema: Any, caps: Caps = Caps()) -> Any:
    """A copy of `schema` with the caps above (the grammar's copy, never the validator's)."""
    if isinstance(schema, list):
        return [capped_schema(s, caps) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("enum", "const", "examples", "default"):
            out[key] = value
        elif key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: capped_schema(v, caps) for k, v in value.items()} if isinstance(value, Mapping) else value
            )
        else:
            out[key] = capped_schema(value, caps)
    kind = out.get("type")
    if kind == "string" and "enum" not in out and "const" not in out:
        pattern = out.get("pattern")
        if isinstance(pattern, str) and _pattern_too_big(pattern):
            out.pop("pattern")  # the converter would expand {n} quantifiers into n copies
        if "pattern" not in out and "format" not in out:
            low = min(_int(out.get("minLength"), 0), STRING_CAP)
            high = _int(out.get("maxLength"), caps.string)
            out["minLength"], out["maxLength"] = low, max(low, min(high, caps.string))
    elif kind == "array" or "items" in out:
        low = min(_int(out.get("minItems"), 0), MIN_ITEMS_CAP)
        high = _int(out.get("maxItems"), caps.array)
        out["minItems"], out["maxItems"] = low, max(low, min(high, caps.array))
    return out


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _pattern_too_big(pattern: str) -> bool:
    for match in _REPEAT.finditer(pattern):
        if int(match.group(1)) > _MAX_PATTERN_REPEAT:
            return True
        if match.group(2) and int(match.group(2)) > _MAX_PATTERN_REPEAT:
            return True
    return False


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, plus integer ranges, and string characters without raw control
    characters (its `char` rule lets a model write a raw newline inside a string: invalid JSON)."""

    def _add_primitive(self, name: str, rule: Any) -> str:
        if name == "char":
            return self._add_rule(name, _CHAR)
        return super()._add_primitive(name, rule)

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, Mapping) and schema.get("type") == "integer" and "enum" not in schema:
            rule = integer_rule(schema)
            if rule is not None:
                return self._add_rule(name or "root", rule)
        if isinstance(schema, Mapping) and schema.get("type") == "number" and schema.get("minimum") == 0:
            # `minimum: 0` (estimates, amounts): no minus sign; other number bounds are left to validation.
            return self._add_rule(name or "root", _NON_NEGATIVE)
        return super().visit(schema, name)


def integer_rule(schema: Mapping[str, Any]) -> str | None:
    """GBNF for an integer with bounds: the values themselves when few, else a digit-length bound."""
    low, high = (
        _bound(schema, "minimum", "exclusiveMinimum", 1),
        _bound(schema, "maximum", "exclusiveMaximum", -1),
    )
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        if high < low:
            return None  # nothing is valid; let validation say so
        if high - low < SMALL_RANGE:
            return "(" + " | ".join(f'"{v}"' for v in range(low, high + 1)) + ") space"
    widest = max(abs(b) for b in (low, high) if b is not None)
    digits = max(1, len(str(widest)))
    positive = f'("0" | [1-9] [0-9]{{0,{digits - 1}}})' if digits > 1 else "[0-9]"
    if low is not None and low >= 0:
        return f"{positive} space"
    if high is not None and high <= 0:
        return f'("0" | "-" [1-9] [0-9]{{0,{digits - 1}}}) space' if digits > 1 else '("0" | "-" [1-9]) space'
    return f'"-"? {positive} space'


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str, step: int) -> int | None:
    found: list[int] = []
    for key, shift in ((inclusive, 0), (exclusive, step)):
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found.append((math.ceil(value) if step > 0 else math.floor(value)) + shift)
    if not found:
        return None
    return max(found) if step > 0 else min(found)


def grammar_text(schema: Mapping[str, Any], caps: Caps = Caps()) -> str:
    """The GBNF of the capped copy of `schema`. Raises on a schema the converter cannot express."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(capped_schema(json.loads(json.dumps(schema)), caps), "input")
    converter.visit(resolved, "")
    return converter.format_grammar()


def token_budget(schema: Mapping[str, Any], caps: Caps = Caps()) -> int:
    """The most tokens the capped grammar lets the model write (an estimate from its character budget)."""
    chars = _chars(capped_schema(schema, caps), capped_schema(schema, caps), 0)
    return int(chars / CHARS_PER_TOKEN) + 16


def _chars(schema: Any, root: Any, depth: int) -> int:
    if depth > 32 or not isinstance(schema, Mapping):
        return FREE_FORM_CHARS
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        return _chars(target, root, depth + 1) if target is not None else FREE_FORM_CHARS
    if "const" in schema:
        return len(json.dumps(schema["const"]))
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return max(len(json.dumps(v)) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return max(_chars(s, root, depth + 1) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return max((_chars({**schema, "type": k}, root, depth + 1) for k in kind), default=FREE_FORM_CHARS)
    if kind == "string":
        return schema.get("maxLength", STRING_CAP) + 4 if "format" not in schema else 40
    if kind in ("integer", "number"):
        return 12
    if kind in ("boolean", "null"):
        return 5
    if kind == "array" or "items" in schema:
        items = schema.get("items", {})
        if isinstance(items, list):
            return 4 + sum(_chars(s, root, depth + 1) + 2 for s in items)
        return 4 + schema.get("maxItems", ARRAY_CAP) * (_chars(items, root, depth + 1) + 2)
    props = schema.get("properties")
    if isinstance(props, Mapping) and props:
        return 4 + sum(len(k) + 6 + _chars(v, root, depth + 1) for k, v in props.items())
    return FREE_FORM_CHARS


def _resolve(root: Any, ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
