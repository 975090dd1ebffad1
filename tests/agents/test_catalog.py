"""The specialist agent catalog: valid files, portable schemas, idempotent seeding that keeps user edits."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command

from apps.agents.catalog import (
    CATALOG_DIR,
    CatalogEntry,
    CatalogError,
    load_catalog,
    load_entry,
    seed_catalog,
)
from apps.agents.catalog.seed import row_values, values_hash
from apps.agents.models import Agent
from tests.factories import AgentFactory

EXPECTED_SLUGS = {
    "business-analyst",
    "coding",
    "code-reviewer",
    "project-manager",
    "architect",
    "qa-engineer",
    "devops",
    "security-reviewer",
    "technical-writer",
    "data-analyst",
    "ux-writer",
    "product-manager",
    "database-designer",
    "release-notes",
    "support-triage",
}
REVIEW_CRITERIA = (
    "correctness",
    "readability",
    "naming",
    "structure",
    "error_handling",
    "security",
    "performance",
    "testing",
    "documentation",
    "maintainability",
)


@pytest.fixture(scope="module")
def catalog() -> dict[str, CatalogEntry]:
    return {entry.agent_id: entry for entry in load_catalog()}


# --------------------------------------------------------------------------- the shipped files


def test_the_catalog_ships_the_fifteen_specialists(catalog: dict[str, CatalogEntry]) -> None:
    assert set(catalog) == EXPECTED_SLUGS
    assert len({entry.name for entry in catalog.values()}) == 15
    assert len(list(CATALOG_DIR.glob("*.yaml"))) == 15


def test_every_entry_is_a_complete_agent(catalog: dict[str, CatalogEntry]) -> None:
    for entry in catalog.values():
        assert entry.source.name == f"{entry.agent_id}.yaml"
        assert entry.capabilities and entry.description and "\n" not in entry.description
        assert entry.temperature is not None and 0 <= entry.temperature <= 2
        # A real prompt (role, method, output rules), not a one-line placeholder.
        assert len(entry.system_prompt.split()) >= 200, entry.agent_id
        # Left to the configured default, so every agent also runs on whatever platform is set up.
        assert entry.preferred_platform == "" and entry.model == ""
        # The local model refuses tool calls; shipped agents must run there too.
        assert entry.tools == ()
        assert entry.example is not None and entry.example.input["task"]


def test_structured_agents_have_a_valid_example_output(catalog: dict[str, CatalogEntry]) -> None:
    structured = {slug for slug, entry in catalog.items() if entry.output_schema}
    assert structured == {
        "business-analyst",
        "code-reviewer",
        "project-manager",
        "qa-engineer",
        "security-reviewer",
        "support-triage",
        "ux-writer",
    }
    for slug in structured:
        entry = catalog[slug]
        jsonschema.validate(entry.example.output, entry.output_schema)


def test_every_output_schema_converts_to_a_llama_cpp_grammar(catalog: dict[str, CatalogEntry]) -> None:
    from llama_cpp import LlamaGrammar

    for entry in catalog.values():
        if entry.output_schema is None:
            continue
        # Both as given and key-sorted (how LocalPlatform serialises it).
        for text in (json.dumps(entry.output_schema), json.dumps(entry.output_schema, sort_keys=True)):
            grammar = LlamaGrammar.from_json_schema(text, verbose=False)
            assert grammar is not None, entry.agent_id


# --------------------------------------------------------------------------- the Code Reviewer's ten points


@pytest.fixture
def review(catalog: dict[str, CatalogEntry]) -> dict[str, Any]:
    return copy.deepcopy(catalog["code-reviewer"].example.output)


def _review_errors(catalog: dict[str, CatalogEntry], review: dict[str, Any]) -> list[str]:
    schema = catalog["code-reviewer"].output_schema
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(review)]


def test_the_review_schema_names_exactly_the_ten_criteria(catalog: dict[str, CatalogEntry]) -> None:
    criteria = catalog["code-reviewer"].output_schema["properties"]["criteria"]
    assert tuple(criteria["properties"]) == REVIEW_CRITERIA
    assert sorted(criteria["required"]) == sorted(REVIEW_CRITERIA)
    assert criteria["additionalProperties"] is False


def test_a_ten_point_review_is_accepted(catalog: dict[str, CatalogEntry], review: dict[str, Any]) -> None:
    assert set(review["criteria"]) == set(REVIEW_CRITERIA)
    assert _review_errors(catalog, review) == []


def test_a_nine_point_review_is_rejected(catalog: dict[str, CatalogEntry], review: dict[str, Any]) -> None:
    del review["criteria"]["testing"]
    assert _review_errors(catalog, review) == ["'testing' is a required property"]


def test_a_review_with_a_wrong_criterion_name_is_rejected(
    catalog: dict[str, CatalogEntry], review: dict[str, Any]
) -> None:
    review["criteria"]["style"] = review["criteria"].pop("readability")
    errors = _review_errors(catalog, review)
    assert "'readability' is a required property" in errors
    assert any("'style' was unexpected" in error for error in errors)


def test_an_eleventh_point_is_rejected(catalog: dict[str, CatalogEntry], review: dict[str, Any]) -> None:
    review["criteria"]["style"] = copy.deepcopy(review["criteria"]["naming"])
    assert any("'style' was unexpected" in error for error in _review_errors(catalog, review))


@pytest.mark.parametrize("score", [0, 11, 7.5, "7", None])
def test_a_score_outside_1_to_10_integers_is_rejected(
    catalog: dict[str, CatalogEntry], review: dict[str, Any], score: object
) -> None:
    review["criteria"]["security"]["score"] = score
    assert _review_errors(catalog, review)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(verdict="maybe"),
        lambda r: r.pop("summary"),
        lambda r: r.update(extra="x"),
        lambda r: r["criteria"]["naming"].pop("suggested_fixes"),
        lambda r: r["criteria"]["naming"].update(findings="none"),
    ],
    ids=["unknown-verdict", "no-summary", "extra-key", "no-suggested-fixes", "findings-not-a-list"],
)
def test_other_malformed_reviews_are_rejected(
    catalog: dict[str, CatalogEntry], review: dict[str, Any], change: Any
) -> None:
    change(review)
    assert _review_errors(catalog, review)


# --------------------------------------------------------------------------- the loader's validation

VALID_FILE = """\
agent_id: {slug}
name: Test Agent
description: One line.
system_prompt: You test things.
capabilities: [TESTING]
temperature: 0.3
"""


def _write(tmp_path: Path, text: str, slug: str = "test-agent") -> Path:
    path = tmp_path / f"{slug}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_file_loads_with_the_model_defaults(tmp_path: Path) -> None:
    entry = load_entry(_write(tmp_path, VALID_FILE.format(slug="test-agent")))
    assert entry.agent_type == "task" and entry.timeout_seconds == 120 and entry.max_retries == 2
    assert entry.output_schema is None and entry.tools == () and entry.example is None


OBJECT_A = "{type: object, properties: {a: {type: string}}, required: [a], additionalProperties: false}"
SCHEMA = f"output_schema: {OBJECT_A}\n"
EXAMPLE_A = "{input: {task: x}, output: {a: y}}"


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("colour: blue\n", "colour", "unknown field"),
        ("temperature: hot\n", None, "duplicate key 'temperature'"),
        ("max_retries: many\n", "max_retries", "must be an integer"),
        ("agent_type: robot\n", "agent_type", "not a valid choice"),
        ("tools: [shell]\n", "tools", "not a built-in tool"),
        ("timeout_seconds: 0\n", "timeout_seconds", "greater than or equal to 1"),
        ("preferred_platform: openia\n", "preferred_platform", "not a valid choice"),
        (
            f"output_schema: {OBJECT_A.replace('[a]', 'a')}\nexample: {EXAMPLE_A}\n",
            "output_schema",
            "not a valid JSON Schema",
        ),
        (
            "output_schema: {type: object, properties: {a: {type: string, pattern: '^x'}}, required: [a],"
            " additionalProperties: false}\nexample: {input: {task: x}, output: {a: x}}\n",
            "output_schema.properties.a",
            "'pattern' is not portable",
        ),
        (
            "output_schema: {type: object, properties: {a: {type: string}}}\nexample: {input: {task: x}}\n",
            "output_schema",
            "additionalProperties: false",
        ),
        (
            "output_schema: {type: object, properties: {a: {$ref: '#/$defs/b'}}, additionalProperties: false,"
            " $defs: {c: {type: string}}}\nexample: {input: {task: x}}\n",
            "output_schema.properties.a",
            "name one of the root's $defs",
        ),
        (
            "output_schema: {type: object, properties: {a: {$ref: '#/$defs/c', type: string}},"
            " additionalProperties: false, $defs: {c: {type: string}}}\nexample: {input: {task: x}}\n",
            "output_schema.properties.a",
            "a $ref must stand alone",
        ),
        (SCHEMA, "example", "is required for an agent with an output schema"),
        (
            SCHEMA + "example: {input: {task: x}, output: {a: 1}}\n",
            "example.output",
            "at a: 1 is not of type",
        ),
        (SCHEMA + "example: {input: {question: x}, output: {a: y}}\n", "example.input", "'task' string"),
    ],
)
def test_invalid_files_fail_with_the_file_and_the_field(
    tmp_path: Path, extra: str, field: str | None, message: str
) -> None:
    text = VALID_FILE.format(slug="test-agent") + extra
    with pytest.raises(CatalogError) as caught:
        load_entry(_write(tmp_path, text))
    assert caught.value.field == field
    assert message in str(caught.value)
    assert str(caught.value).startswith("test-agent.yaml: ")


@pytest.mark.parametrize(
    ("replace", "field", "message"),
    [
        (("temperature: 0.3", "temperature: 2.5"), "temperature", "less than or equal to 2.0"),
        (("temperature: 0.3", "temperature: '0.3'"), "temperature", "must be a number"),
        (("description: One line.", "description: ''"), "description", "one non-empty line"),
        (("capabilities: [TESTING]", "capabilities: [testing]"), "capabilities", "not UPPER_SNAKE_CASE"),
        (("capabilities: [TESTING]", "capabilities: []"), "capabilities", "at least one"),
        (("capabilities: [TESTING]", "capabilities: TESTING"), "capabilities", "list of strings"),
        (("system_prompt: You test things.\n", ""), "system_prompt", "is required"),
    ],
)
def test_invalid_values_fail_with_the_field(
    tmp_path: Path, replace: tuple[str, str], field: str, message: str
) -> None:
    text = VALID_FILE.format(slug="test-agent").replace(*replace)
    with pytest.raises(CatalogError) as caught:
        load_entry(_write(tmp_path, text))
    assert (caught.value.field, caught.value.path.name) == (field, "test-agent.yaml")
    assert message in caught.value.message


def test_the_slug_format_is_the_models(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        load_entry(_write(tmp_path, VALID_FILE.format(slug="Test_Agent"), slug="Test_Agent"))
    assert caught.value.field == "agent_id" and "lowercase letters" in caught.value.message


def test_the_file_name_must_be_the_slug(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        load_entry(_write(tmp_path, VALID_FILE.format(slug="test-agent"), slug="other-name"))
    assert caught.value.field == "agent_id" and "file name" in caught.value.message


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"^test-agent\.yaml: not valid YAML"):
        load_entry(_write(tmp_path, "agent_id: [unclosed\n"))


def test_two_files_with_the_same_name_are_rejected(tmp_path: Path) -> None:
    _write(tmp_path, VALID_FILE.format(slug="agent-a"), slug="agent-a")
    _write(tmp_path, VALID_FILE.format(slug="agent-b"), slug="agent-b")
    with pytest.raises(CatalogError, match=r"'Test Agent' is also used by agent-a\.yaml"):
        load_catalog(tmp_path)


# --------------------------------------------------------------------------- seeding


def _snapshot() -> dict[str, tuple[Any, ...]]:
    return {a.agent_id: (a.pk, a.updated_at, a.catalog_hash) for a in Agent.objects.all()}


@pytest.mark.django_db
def test_seeding_creates_the_fifteen_shared_agents() -> None:
    report = seed_catalog()
    assert sorted(report.created) == sorted(EXPECTED_SLUGS)
    agents = Agent.objects.filter(agent_id__in=EXPECTED_SLUGS)
    assert agents.count() == 15
    assert all(a.is_shared and a.owner_id is None and a.is_active for a in agents)
    reviewer = agents.get(agent_id="code-reviewer")
    assert set(reviewer.output_schema["properties"]["criteria"]["required"]) == set(REVIEW_CRITERIA)
    # The stored hash is the hash of what the row holds: that is how an edit is detected later.
    assert all(a.catalog_hash == values_hash(row_values(a)) for a in agents)


@pytest.mark.django_db
def test_seeding_twice_writes_nothing_the_second_time(django_assert_max_num_queries: Any) -> None:
    seed_catalog()
    before = _snapshot()
    # One SELECT of the rows (FOR UPDATE) plus transaction bookkeeping; no INSERT or UPDATE.
    with django_assert_max_num_queries(3) as queries:
        report = seed_catalog()
    assert not [q["sql"] for q in queries.captured_queries if q["sql"].startswith(("INSERT", "UPDATE"))]
    assert (len(report.created), len(report.updated), len(report.unchanged)) == (0, 0, 15)
    assert _snapshot() == before


@pytest.mark.django_db
def test_the_command_prints_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("seed_agents")
    call_command("seed_agents")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "15 catalog agents: 15 created, 0 updated, 0 unchanged, 0 kept (edited)"
    assert out[1] == "15 catalog agents: 0 created, 0 updated, 15 unchanged, 0 kept (edited)"


@pytest.mark.django_db
def test_a_users_edit_is_kept_unless_forced(capsys: pytest.CaptureFixture[str]) -> None:
    seed_catalog()
    edited = Agent.objects.get(agent_id="code-reviewer")
    edited.system_prompt = "Our house rules: ..."
    edited.temperature = 0.0
    edited.save()
    edited_at = edited.updated_at

    call_command("seed_agents")
    assert (
        "kept because edited since seeded (--force overwrites them): code-reviewer" in capsys.readouterr().out
    )
    edited.refresh_from_db()
    assert (edited.system_prompt, edited.temperature, edited.updated_at) == (
        "Our house rules: ...",
        0.0,
        edited_at,
    )

    call_command("seed_agents", "--force")
    assert "0 created, 1 updated, 14 unchanged" in capsys.readouterr().out
    edited.refresh_from_db()
    catalog_entry = next(e for e in load_catalog() if e.agent_id == "code-reviewer")
    assert edited.system_prompt == catalog_entry.system_prompt and edited.temperature == 0.2
    assert seed_catalog().unchanged == sorted(EXPECTED_SLUGS)


@pytest.mark.django_db
def test_a_new_catalog_version_updates_untouched_agents_only() -> None:
    seed_catalog()
    user_edited = Agent.objects.get(agent_id="devops")
    user_edited.description = "Ours now."
    user_edited.save()

    newer = [
        dataclasses.replace(e, system_prompt=e.system_prompt + "\nBe brief.")
        if e.agent_id in ("devops", "coding")
        else e
        for e in load_catalog()
    ]
    report = seed_catalog(entries=newer)
    assert (report.updated, report.kept_edited) == (["coding"], ["devops"])
    assert Agent.objects.get(agent_id="coding").system_prompt.endswith("Be brief.")
    assert not Agent.objects.get(agent_id="devops").system_prompt.endswith("Be brief.")
    assert seed_catalog(entries=newer).writes == 0


@pytest.mark.django_db
def test_fields_outside_the_catalog_are_the_operators() -> None:
    """Disabling an agent is not an edit of its definition: it stays disabled and the agent still updates."""
    seed_catalog()
    Agent.objects.filter(agent_id="ux-writer").update(is_active=False)
    newer = [
        dataclasses.replace(e, temperature=0.6) if e.agent_id == "ux-writer" else e for e in load_catalog()
    ]
    assert seed_catalog(entries=newer).updated == ["ux-writer"]
    agent = Agent.objects.get(agent_id="ux-writer")
    assert (agent.temperature, agent.is_active) == (0.6, False)


@pytest.mark.django_db
def test_a_users_private_agent_with_a_catalog_slug_is_never_taken_over(alice: Any) -> None:
    mine = AgentFactory(owner=alice, agent_id="architect", name="Alice's architect", is_shared=False)
    for force in (False, True):
        report = seed_catalog(force=force)
        assert report.conflicts == ["architect"]
        mine.refresh_from_db()
        assert (mine.owner_id, mine.name, mine.is_shared, mine.catalog_hash) == (
            alice.pk,
            "Alice's architect",
            False,
            "",
        )


@pytest.mark.django_db
def test_a_dry_run_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("seed_agents", "--dry-run")
    assert "Dry run, nothing written: 15 catalog agents: 15 created" in capsys.readouterr().out
    assert not Agent.objects.exists()


@pytest.mark.django_db
def test_make_run_shows_the_fifteen_agents_to_the_demo_user(settings: Any) -> None:
    """What `make seed` does, then the API call it prints: the catalog is visible to the demo user."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("seed_agents", stdout=io.StringIO())
    call_command("create_demo_user", stdout=io.StringIO())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user__username=settings.DEMO_USER).key}")

    response = client.get("/api/v1/agents/", {"page_size": 50})

    assert response.status_code == 200, response.content
    listed = {agent["agent_id"]: agent for agent in response.json()["results"]}
    assert set(listed) == EXPECTED_SLUGS
    assert listed["code-reviewer"]["output_schema"]["properties"]["criteria"]["additionalProperties"] is False
