"""What validating an OpenAI-compatible request costs: `parse_chat_request` (pydantic models, wire.py) for a
plain chat, one with tools and a json_schema response format (schemas cached, and not), and a Responses API
body (validated, then translated into the chat request). Pure Python, no database, no network.

    .venv/bin/python bench/openai_parse.py [--runs 5000]

Prints a table (microseconds per request) and writes bench/results/openai_parse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from _root import ROOT

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from apps.agents.openai_compat.responses_api import ResponsesBody, to_chat_body  # noqa: E402
from apps.agents.openai_compat.schema_check import _schema_problem  # noqa: E402
from apps.agents.openai_compat.schemas import parse_chat_request  # noqa: E402
from apps.agents.openai_compat.wire import validate_body  # noqa: E402

HISTORY = [{"role": role, "content": "hello " * 20} for role in ["user", "assistant"] * 5]
PLAIN = {
    "model": "greeter",
    "messages": [{"role": "system", "content": "Be brief."}, *HISTORY, {"role": "user", "content": "Hi"}],
    "temperature": 0.5,
    "max_tokens": 100,
    "stream": True,
    "stream_options": {"include_usage": True},
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
TOOLS = {
    **PLAIN,
    "tools": [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {**SCHEMA, "title": f"T{i}"}}}
        for i in range(5)
    ],
    "response_format": {"type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA}},
    "stop": ["END"],
    "seed": 1,
}
RESPONSES = {
    "model": "greeter",
    "instructions": "Be brief.",
    "input": [{"role": "user", "content": "Hi"}],
    "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}],
    "text": {"format": {"type": "json_schema", "name": "City", "schema": SCHEMA}},
}


def chat(body: dict) -> object:
    return parse_chat_request(body, max_messages=100, max_chars=100_000)


def chat_new_schemas(body: dict) -> object:
    _schema_problem.cache_clear()  # as if every schema were new: jsonschema's meta-schema check each time
    return chat(body)


def responses(body: dict) -> object:
    parsed = validate_body(ResponsesBody, body)
    return parse_chat_request(
        to_chat_body(parsed), max_messages=100, max_chars=100_000, prior_calls={}, continuing=True
    )


def measure(function, body: dict, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(runs):
            function(body)
        samples.append((time.perf_counter() - started) / runs * 1e6)
    return {"median_us": round(statistics.median(samples), 1), "min_us": round(min(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    cases = {
        "chat: 12 messages": (chat, PLAIN),
        "chat: + 5 tools, json_schema, stop, seed": (chat, TOOLS),
        "  the same, schemas not seen before": (chat_new_schemas, TOOLS),
        "responses: input, tool, text.format": (responses, RESPONSES),
    }
    results = {name: measure(function, body, args.runs) for name, (function, body) in cases.items()}
    print(f"{'request':<45} {'median us':>10} {'min us':>8}")
    for name, row in results.items():
        print(f"{name:<45} {row['median_us']:>10} {row['min_us']:>8}")
    out = ROOT / "bench" / "results" / "openai_parse.json"
    out.write_text(
        json.dumps({"python": platform.python_version(), "runs": args.runs, "results": results}, indent=2)
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
