"""What the schema policy and the bounded JSON loader cost (no database, no server).

    .venv/bin/python bench/schema_policy.py

Times, best of 5 medians of N calls each: checking a catalog schema, a cached validator lookup, validating the
catalog example with the RE2 validator against plain jsonschema, a catastrophic pattern on RE2 against
Python's `re` (22 characters: each one more doubles `re`'s time), and loads_bounded against json.loads.
Prints a table and writes bench/results/schema_policy.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import time
from typing import Any

from _root import ROOT

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

import jsonschema  # noqa: E402
import yaml  # noqa: E402

from apps.agents.api.parsers import JSONTooDeep, loads_bounded  # noqa: E402
from apps.agents.engine.schema_policy import SchemaLimits, build_validator, check_schema, first_error  # noqa: E402

LIMITS = SchemaLimits()


def per_call(fn: Any, n: int) -> float:
    """Seconds per call: the median of 5 runs of n calls."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - started) / n)
    return statistics.median(runs)


def main() -> None:
    entry = yaml.safe_load((ROOT / "apps/agents/catalog/code-reviewer.yaml").read_text())
    schema, example = entry["output_schema"], entry["example"]["output"]
    plain = jsonschema.validators.validator_for(schema)(schema)
    build_validator(schema, LIMITS)
    evil_schema = {"type": "string", "pattern": "^(a+)+$"}
    small_body = json.dumps(
        {"input_data": {"task": "Review this code " * 40}, "context": {"metadata": {"a": 1}}}
    )
    big_body = json.dumps([{"id": i, "tags": ["x", "y"]} for i in range(50_000)]).encode()
    brackets = b"[" * 100_000

    def too_deep() -> None:
        with contextlib.suppress(JSONTooDeep):
            loads_bounded(brackets, max_depth=64)

    rows = [
        ("check_schema(code-reviewer schema), uncached", per_call(lambda: check_schema(schema, LIMITS), 50)),
        ("build_validator, cached", per_call(lambda: build_validator(schema, LIMITS), 2000)),
        (
            "validate example, policy validator (RE2)",
            per_call(lambda: first_error(example, schema, LIMITS), 500),
        ),
        (
            "validate example, plain jsonschema",
            per_call(lambda: jsonschema.exceptions.best_match(plain.iter_errors(example)), 500),
        ),
        (
            "'^(a+)+$' vs 40 a's + '!', RE2",
            per_call(lambda: first_error("a" * 40 + "!", evil_schema, LIMITS), 500),
        ),
        ("'^(a+)+$' vs 22 a's + '!', Python re", per_call(lambda: re.search("^(a+)+$", "a" * 22 + "!"), 1)),
        (f"json.loads, {len(small_body)} B body", per_call(lambda: json.loads(small_body), 5000)),
        (
            f"loads_bounded, {len(small_body)} B body",
            per_call(lambda: loads_bounded(small_body, max_depth=64), 5000),
        ),
        (f"json.loads, {len(big_body) // 1000} KB body", per_call(lambda: json.loads(big_body), 5)),
        (
            f"loads_bounded, {len(big_body) // 1000} KB body",
            per_call(lambda: loads_bounded(big_body, max_depth=64), 5),
        ),
        ("loads_bounded, 100 KB of '[' (refused)", per_call(too_deep, 20)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'what'.ljust(width)}  time")
    for name, seconds in rows:
        print(f"{name.ljust(width)}  {seconds * 1e6:10.1f} us")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "schema_policy.json").write_text(
        json.dumps({name: round(seconds * 1e6, 2) for name, seconds in rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
