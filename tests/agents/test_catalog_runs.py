"""Every catalog agent runs end to end: real ExecutionEngine, real adapters and SDKs, fake provider servers over
HTTP, real DB. The fake answers with the entry's example output, so a structured agent's whole path is exercised:
schema sent to the provider, JSON parsed, validated against the schema, stored on the execution row."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from asgiref.sync import sync_to_async

from apps.agents.catalog import CatalogEntry, load_catalog, seed_catalog
from apps.agents.models import Agent, AgentExecution
from tests.agents.test_catalog import EXPECTED_SLUGS


@pytest.fixture(scope="module")
def catalog() -> dict[str, CatalogEntry]:
    return {entry.agent_id: entry for entry in load_catalog()}


def _schema_sent(platform: str, body: dict[str, Any]) -> Any:
    if platform == "openai":
        return body["response_format"]["json_schema"]["schema"]
    if platform == "anthropic":  # a forced tool whose input schema is the output schema
        return next(t["input_schema"] for t in body["tools"] if t["name"] == body["tool_choice"]["name"])
    return body["generationConfig"]["responseJsonSchema"]


async def _run(slug: str, catalog: dict[str, CatalogEntry], user: Any, *, platform: str = "") -> Any:
    from apps.agents.services.execution_engine import execution_engine

    await sync_to_async(seed_catalog)()
    agent = await Agent.objects.aget(agent_id=slug)
    agent.preferred_platform = platform  # in memory only: this run's choice, not an edit of the row
    return await execution_engine.execute_agent(agent, catalog[slug].example.input, user)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("slug", sorted(EXPECTED_SLUGS))
async def test_every_catalog_agent_runs_end_to_end(
    slug: str, catalog: dict[str, CatalogEntry], fake_registry: Any, fake_openai: Any, alice: Any
) -> None:
    entry = catalog[slug]
    expected = entry.example.output if entry.example.output is not None else f"{entry.name}: a useful answer."
    fake_openai.reply(text=json.dumps(expected) if entry.output_schema else expected)

    result = await _run(slug, catalog, alice)

    assert result.success, result.error
    assert result.output == expected
    if entry.output_schema:
        jsonschema.validate(result.output, entry.output_schema)
    execution = await AgentExecution.objects.aget(pk=result.execution_id)
    assert (execution.status, execution.output, execution.agent_slug) == ("completed", expected, slug)

    body = fake_openai.requests[0].body
    assert body["messages"][0] == {"role": "system", "content": entry.system_prompt}
    assert entry.example.input["task"] in body["messages"][-1]["content"]
    assert body["temperature"] == entry.temperature
    if entry.output_schema:
        assert _schema_sent("openai", body) == entry.output_schema
    else:
        assert "response_format" not in body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("platform", ["anthropic", "gemini"])
@pytest.mark.parametrize("slug", ["code-reviewer", "project-manager", "support-triage"])
async def test_structured_agents_work_on_every_remote_platform(
    slug: str,
    platform: str,
    catalog: dict[str, CatalogEntry],
    fake_registry: Any,
    fake_anthropic: Any,
    fake_gemini: Any,
    alice: Any,
) -> None:
    """Anthropic gets the schema as a forced tool, Gemini as responseJsonSchema ($defs and $ref included)."""
    entry = catalog[slug]
    fake = {"anthropic": fake_anthropic, "gemini": fake_gemini}[platform]
    fake.reply(text=json.dumps(entry.example.output))

    result = await _run(slug, catalog, alice, platform=platform)

    assert result.success, result.error
    assert result.platform_used == platform
    assert result.output == entry.example.output
    jsonschema.validate(result.output, entry.output_schema)
    assert _schema_sent(platform, fake.requests[0].body) == entry.output_schema


@pytest.mark.django_db(transaction=True)
async def test_a_nine_point_review_from_the_model_is_not_accepted(
    catalog: dict[str, CatalogEntry], fake_registry: Any, fake_openai: Any, alice: Any
) -> None:
    """The engine holds the model to the schema: a review missing a criterion is re-asked, then fails."""
    nine = copy.deepcopy(catalog["code-reviewer"].example.output)
    del nine["criteria"]["testing"]
    for _ in range(3):  # the first answer and both re-asks
        fake_openai.reply(text=json.dumps(nine))

    result = await _run("code-reviewer", catalog, alice)

    assert not result.success
    assert result.error.code == "invalid_output"
    assert "'testing' is a required property" in result.error.message
    assert len(fake_openai.requests) == 3


@pytest.mark.django_db
def test_the_readme_code_review_call_returns_the_ten_point_review(
    catalog: dict[str, CatalogEntry], fake_registry: Any, fake_openai: Any, alice: Any
) -> None:
    """The README's example: POST /api/v1/agents/code-reviewer/execute/ answers the structured review."""
    from rest_framework.test import APIClient

    from tests.agents.api.conftest import token_for

    seed_catalog()
    entry = catalog["code-reviewer"]
    fake_openai.reply(text=json.dumps(entry.example.output), input_tokens=1052, output_tokens=612)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(alice)}")

    response = client.post(
        "/api/v1/agents/code-reviewer/execute/", {"input_data": entry.example.input}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["success"], body["platform_used"], body["tokens_used"]) == (True, "openai", 1664)
    assert body["output"] == entry.example.output and len(body["output"]["criteria"]) == 10
    jsonschema.validate(body["output"], entry.output_schema)
