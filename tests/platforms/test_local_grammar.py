"""The local platform's grammar builder (no model needed): caps, key order, integer ranges, safety."""

from __future__ import annotations

import time

from apps.platforms.local_grammar import (
    ARRAY_CAP,
    MIN_ITEMS_CAP,
    STRING_CAP,
    build,
    build_steps,
    capped_schema,
    grammar_text,
    integer_rule,
    token_budget,
)


def rules(text: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in text.splitlines())


def test_properties_keep_the_schema_order_not_alphabetical() -> None:
    schema = {
        "type": "object",
        "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}, "mid": {"type": "boolean"}},
        "required": ["zeta", "alpha", "mid"],
    }
    root = rules(grammar_text(schema))["root"]

    assert root.index("zeta-kv") < root.index("alpha-kv") < root.index("mid-kv")


def test_a_small_integer_range_is_its_values_and_a_large_one_a_digit_bound() -> None:
    assert integer_rule({"type": "integer", "minimum": 1, "maximum": 4}) == '("1" | "2" | "3" | "4") space'
    assert integer_rule({"type": "integer", "exclusiveMinimum": 0, "maximum": 2}) == '("1" | "2") space'
    # 0..100000: no minus sign, no leading zero, at most six digits.
    assert integer_rule({"type": "integer", "minimum": 0, "maximum": 100000}) == (
        '("0" | [1-9] [0-9]{0,5}) space'
    )
    assert integer_rule({"type": "integer"}) is None
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}}
    assert (
        rules(grammar_text(schema))["score"] == "(" + " | ".join(f'"{i}"' for i in range(1, 11)) + ") space"
    )


def test_strings_and_arrays_are_capped_but_never_below_min_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "string"},
            "short": {"type": "string", "maxLength": 10},
            "many": {"type": "array", "items": {"type": "string"}},
            "at_least_five": {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 9},
        },
    }
    capped = capped_schema(schema)["properties"]

    assert capped["free"]["maxLength"] == STRING_CAP
    assert capped["short"]["maxLength"] == 10
    assert capped["many"]["maxItems"] == ARRAY_CAP
    assert capped["at_least_five"]["minItems"] == 5 == capped["at_least_five"]["maxItems"]
    assert (
        "maxLength" not in schema["properties"]["free"]
    )  # the caller's schema (the validator's) is untouched


def test_no_raw_control_characters_inside_strings() -> None:
    char = rules(grammar_text({"type": "string"}))["char"]

    assert char.startswith(r'[^"\\\x7F\x00-\x1F]')


def test_huge_min_length_and_min_items_do_not_blow_up_the_grammar() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 10**9},
            "a": {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
            "p": {"type": "string", "pattern": "^a{1000000}$"},
        },
        "required": ["s", "a", "p"],
    }
    started = time.perf_counter()
    text = grammar_text(schema)

    assert time.perf_counter() - started < 2
    assert len(text) < 20_000
    assert rules(text)["a"].count("integer") == MIN_ITEMS_CAP


def test_a_smaller_token_limit_picks_tighter_caps() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "string"}, "maxItems": 10}},
        "required": ["items"],
    }
    steps = build_steps(schema)
    loose, tight = build(schema, 10_000), build(schema, 60)

    assert steps[0].budget > steps[-1].budget
    assert loose.caps.array == ARRAY_CAP and loose.budget == token_budget(schema)
    assert tight.budget <= 60 < loose.budget
    assert tight.caps != loose.caps and tight.text != loose.text


def test_a_schema_the_grammar_fully_enforces_is_exact_and_one_it_cannot_is_not() -> None:
    from apps.agents.catalog.loader import load_catalog

    structured = [e.output_schema for e in load_catalog() if e.output_schema is not None]
    assert structured and all(build_steps(s)[0].exact for s in structured)  # no re-ask is ever needed
    for keyword in ({"format": "email"}, {"pattern": "a{500}"}, {"minLength": STRING_CAP + 1}):
        schema = {"type": "object", "properties": {"a": {"type": "string", **keyword}}, "required": ["a"]}
        assert not build_steps(schema)[0].exact, keyword
    assert not build_steps({"type": "array", "items": {"type": "string"}, "uniqueItems": True})[0].exact
    assert not build_steps({"type": "number", "maximum": 3})[0].exact


def test_a_number_with_minimum_zero_cannot_be_written_negative() -> None:
    # project-manager's estimate_days: llama-cpp-python's converter ignores number bounds (a "-1" was valid
    # to the grammar and re-asked by validation).
    schema = {
        "type": "object",
        "properties": {"days": {"type": "number", "minimum": 0}},
        "required": ["days"],
    }
    days = rules(grammar_text(schema))["days"]

    assert '"-"' not in days and "[1-9]" in days


def test_the_floor_is_the_smallest_valid_answer_and_below_every_budget() -> None:
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        "required": ["summary", "items"],
    }
    steps = build_steps(schema)

    # {"summary": "", "items": ["", ""]}: ~35 characters, every cap step's budget is above it.
    assert 0 < steps[0].floor == steps[-1].floor < min(g.budget for g in steps)
