"""A JSON Schema from a user is data, never a fetch (apps/agents/engine/schema_policy.py).

alice and bob are plain users. Before the policy, an output_schema `$ref` to a URL made the server GET it
when validating the model's answer, a `file:` reference returned a local file in the response and in the
re-ask prompt sent to the provider, and `"pattern": "^(a+)+$"` froze the event loop.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from typing import Any

import httpx
import pytest

from apps.agents.engine.schema_policy import (
    SchemaLimits,
    SchemaRefused,
    ValidationTimeout,
    build_validator,
    check_schema,
    first_error,
)
from apps.agents.models import Agent, AgentExecution
from tests.agents.api.conftest import post_json, token_for
from tests.agents.api.test_auth_and_errors import assert_envelope
from tests.factories import AgentFactory
from tests.fakes.live_server import wait_until
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db

MARKER = "MARKER-7f3a-the-file-was-read"


class Listener:
    """A TCP server on 127.0.0.1 that only counts connections: a schema reference must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "string", "description": MARKER, "enum": [MARKER]}))
    return path


def hostile_schemas(port: int, secret: Any) -> dict[str, dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/schema.json"
    return {
        "remote-ref": {"$ref": url},
        "nested-remote-ref": {"type": "object", "properties": {"a": {"$ref": url}}},
        "ref-under-unknown-keyword": {"$ref": "#/x", "x": {"$ref": url}},
        "file-ref": {"$ref": secret.as_uri()},
        "id-rebase": {"$id": secret.parent.as_uri() + "/", "$ref": "schema.json"},
        "dynamic-ref": {"$dynamicRef": url},
        "relative-ref": {"$ref": "schema.json"},
    }


def _all_text(fake: Any) -> str:
    return json.dumps([request.body for request in fake.requests], default=str)


def test_a_reference_outside_the_schema_is_refused_naming_the_field(alice_client, listener, secret_file):
    for name, schema in hostile_schemas(listener.port, secret_file).items():
        body = {"name": "Hostile", "agent_id": f"hostile-{name}", "output_schema": schema}
        error = assert_envelope(post_json(alice_client, "/api/v1/agents/", body), 400, "invalid")
        assert list(error["fields"]) == ["output_schema"], (name, error)
        assert MARKER not in json.dumps(error)
    assert not Agent.objects.exists()
    assert listener.connections == 0


def test_patch_is_refused_too(alice_client, alice, listener, secret_file):
    AgentFactory(owner=alice, agent_id="mine")
    for schema in hostile_schemas(listener.port, secret_file).values():
        response = alice_client.patch("/api/v1/agents/mine/", {"output_schema": schema}, format="json")
        assert assert_envelope(response, 400, "invalid")["fields"].keys() == {"output_schema"}
    assert Agent.objects.get(agent_id="mine").output_schema is None
    assert listener.connections == 0


def test_a_stored_hostile_agent_is_refused_at_run_time_and_never_executed(
    fake_registry, fake_openai, bob_client, bob, listener, secret_file
):
    # Rows written before the policy (or past the API, e.g. by a data migration): .update() skips validation.
    for name, schema in hostile_schemas(listener.port, secret_file).items():
        fake_openai.reply(text=json.dumps(MARKER))
        agent = AgentFactory(owner=bob, agent_id=f"old-{name}", preferred_platform="openai", max_retries=0)
        Agent.objects.filter(pk=agent.pk).update(output_schema=schema)

        response = post_json(bob_client, f"/api/v1/agents/old-{name}/execute/", {"input_data": {"task": "x"}})

        error = assert_envelope(response, 409, "schema_refused")
        assert "output_schema" in error["fields"]
        assert MARKER not in response.content.decode()
    assert fake_openai.requests == []
    assert not AgentExecution.objects.exists()
    assert listener.connections == 0
    assert MARKER not in _all_text(fake_openai)


def test_the_catalog_loader_applies_the_same_policy(tmp_path, listener):
    from apps.agents.catalog.loader import CatalogError, load_entry

    path = tmp_path / "remote.yaml"
    path.write_text(
        "name: Remote\nagent_id: remote\ndescription: d\nsystem_prompt: s\ncapabilities: [review]\n"
        f"output_schema: {{'$ref': 'http://127.0.0.1:{listener.port}/x'}}\n"
        "example: {input: {task: t}, output: {}}\n"
    )
    with pytest.raises(CatalogError, match="output_schema"):
        load_entry(path)
    assert listener.connections == 0


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(a)\\1"},  # backreference
        {"type": "string", "pattern": "(?=a)a"},  # lookahead
        {"type": "object", "patternProperties": {"(?<=x)y": {}}},
        {"type": "string", "minLength": 10**9},
        {"type": "array", "maxItems": 10**9},
        {"type": "object", "minProperties": 10**9},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "string"},
    ],
    ids=["backreference", "lookahead", "lookbehind-key", "minLength", "maxItems", "minProperties", "draft4"],
)
def test_patterns_that_backtrack_and_huge_counts_are_refused(alice_client, schema):
    body = {"name": "Hostile", "agent_id": "hostile", "output_schema": schema}
    error = assert_envelope(post_json(alice_client, "/api/v1/agents/", body), 400, "invalid")
    assert error["fields"].keys() == {"output_schema"}


def test_the_caps_are_settings(alice_client, settings):
    settings.SCHEMA_MAX_PROPERTIES = 3
    settings.SCHEMA_MAX_DEPTH = 4
    settings.SCHEMA_MAX_BYTES = 200
    settings.SCHEMA_MAX_COUNT = 10
    too_many = {"type": "object", "properties": {k: {"type": "string"} for k in "abcd"}}
    too_deep: dict[str, Any] = {}
    for _ in range(5):
        too_deep = {"items": too_deep}
    too_big = {"type": "string", "description": "x" * 300}
    too_long = {"type": "string", "maxLength": 11}
    for schema, why in [
        (too_many, "more than 3"),
        (too_deep, "deeper than 4"),
        (too_big, "at most 200"),
        (too_long, "at most 10"),
    ]:
        body = {"name": "Capped", "agent_id": "capped", "output_schema": schema}
        error = assert_envelope(post_json(alice_client, "/api/v1/agents/", body), 400, "invalid")
        assert why in error["fields"]["output_schema"][0]


def test_local_references_and_linear_patterns_are_fine(alice_client):
    schema = {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/item"}, "code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
        "$defs": {"item": {"type": "string", "maxLength": 100}},
    }
    response = post_json(
        alice_client, "/api/v1/agents/", {"name": "Ok", "agent_id": "ok", "output_schema": schema}
    )
    assert response.status_code == 201, response.content


def test_validation_runs_patterns_on_re2():
    # Python's `re` needs about 2**40 steps for this answer; RE2 is linear.
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    limits = SchemaLimits()
    validator = build_validator(schema, limits)
    messages = sorted(e.message for e in validator.iter_errors({"a": "a" * 40 + "!", "b" * 40 + "!": 1}))
    assert messages == [
        "'" + "a" * 40 + "!' does not match '^(a+)+$'",
        "Additional properties are not allowed ('" + "b" * 40 + "!' was unexpected)",
    ]
    assert first_error({"a": "aaa", "bbb": 1}, schema, limits) is None
    with pytest.raises(SchemaRefused):
        check_schema({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, limits)


def test_health_answers_while_a_hostile_schema_run_is_in_progress(
    live_server_url, fake_registry, fake_openai, alice
):
    """The issue's freeze: an answer of forty "a"s and a "!" against ^(a+)+$ blocked the event loop."""
    AgentFactory(
        owner=alice,
        agent_id="hostile",
        preferred_platform="openai",
        max_retries=0,
        output_schema={"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}},
    )
    evil = json.dumps({"a": "a" * 40 + "!"})
    for _ in range(3):  # the answer and both re-asks
        fake_openai.fail(Fault("slow_first_byte", delay=0.3))
        fake_openai.reply(text=evil)
    token = token_for(alice)
    sink: dict[str, Any] = {}

    def run() -> None:
        with httpx.Client(timeout=60) as client:
            sink["response"] = client.post(
                f"{live_server_url}/api/v1/agents/hostile/execute/",
                json={"input_data": {"task": "x"}},
                headers={"Authorization": f"Token {token}"},
            )

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: AgentExecution.objects.exists(), timeout=5)
    latencies = []
    with httpx.Client(timeout=5) as client:
        while thread.is_alive() and len(latencies) < 20:
            started = time.monotonic()
            health = client.get(f"{live_server_url}/api/v1/health/")
            latencies.append(time.monotonic() - started)
            assert health.status_code in (200, 503)
            time.sleep(0.05)
    thread.join(60)

    # Before RE2 the loop was blocked for about 2**40 steps: health never answered within its 5 s timeout.
    # Measured here at 5-40 ms; the bounds are generous for a loaded 2-core machine (one pause of ~1 s
    # was seen when eight test suites ran at once), and still far from "blocked".
    assert latencies, "health was never asked while the run was in progress"
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < 3.0, latencies
    body = sink["response"].json()
    assert sink["response"].status_code == 502
    assert body["error"]["code"] == "invalid_output"
    assert "does not match" in body["error"]["message"]


def test_reference_loops_and_fan_outs_are_refused():
    limits = SchemaLimits()
    fan_out = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(30)
    }
    fan_out["d30"] = {"type": "string"}  # 2**30 evaluations for a value that fails, in about 2 KB
    for schema in [
        {"$ref": "#"},
        {"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#"}}},
        {"$ref": "#/$defs/d0", "$defs": fan_out},
    ]:
        started = time.monotonic()
        with pytest.raises(SchemaRefused):
            check_schema(schema, limits)
        assert time.monotonic() - started < 5  # the trial validation stops itself (CHECK_SECONDS)


def test_a_validation_past_its_budget_stops_in_its_thread():
    # Exponential only for deeply nested values, which a model can be talked into writing.
    branching = {
        "anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "array", "items": {"$ref": "#"}}]
    }
    value: Any = 1
    for _ in range(40):
        value = [value]
    started = time.monotonic()
    with pytest.raises(ValidationTimeout):
        first_error(value, branching, SchemaLimits(validation_seconds=0.2))
    assert time.monotonic() - started < 5
