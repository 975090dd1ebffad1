"""Schemathesis over the whole OpenAPI schema, against the live server, authenticated as alice.

Every operation gets generated requests (valid and invalid); every response must be no 5xx and must match
the schema: documented status code, content type, headers and body. Bounded (few examples per operation) so
that it runs in well under two minutes. Half of the generated object ids are swapped for ids of real objects
alice owns, so that the happy paths (execute through the fake provider, cancel, delete...) are exercised
too, not only the 404s.
"""

from __future__ import annotations

import json
import tomllib
import zlib
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode

from apps.agents.models import ExecutionStatus
from apps.agents.services.background import runner
from tests.agents.api.conftest import token_for
from tests.factories import AgentFactory, ConversationFactory, ExecutionFactory

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = 12


@pytest.fixture
def real_objects(alice):  # type: ignore[no-untyped-def]
    agent = AgentFactory(owner=alice, agent_id="fuzzed", preferred_platform="openai", max_retries=0)
    conversation = ConversationFactory(owner=alice, agent=agent)
    # Finished: its event stream ends at once (a pending one would be followed until it ends).
    execution = ExecutionFactory(agent=agent, user=alice, status=ExecutionStatus.COMPLETED, output="done")
    return {"agents": str(agent.pk), "conversations": str(conversation.pk), "executions": str(execution.pk)}


def _openapi_document() -> dict:  # type: ignore[type-arg]
    """The schema /api/schema/ serves, generated at collection time. (Not loaded from the live server through
    schemathesis.pytest.from_fixture: its lazy loader does not work with pytest 9.)"""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))


# Phases: the schema's examples, then generated requests (valid and invalid). The "coverage" phase (boundary
# values of every keyword) is left out: it is computed at collection time and costs a minute here.
# The operations' settings are those of the full run (schemathesis.toml, which says how to start it).
FULL_RUN = tomllib.loads((Path(__file__).parent / "schemathesis.toml").read_text())
CONFIG = schemathesis.Config.from_dict({**FULL_RUN, "phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(_openapi_document(), config=CONFIG)


def test_the_fuzzed_schema_is_the_one_served(live_server_url):  # type: ignore[no-untyped-def]
    served = httpx.get(f"{live_server_url}/api/schema/?format=json").json()
    assert served == _openapi_document()


def _with_real_id(case, real_objects) -> None:  # type: ignore[no-untyped-def]
    """Use a real object's id for about half of the valid cases (deterministically, from the generated id)."""
    path_id = case.path_parameters.get("id") if case.path_parameters else None
    if path_id is None or case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if zlib.crc32(str(path_id).encode()) % 2 == 0:
        collection = case.path.split("/")[3]  # /api/v1/<collection>/{id}/...
        case.path_parameters["id"] = real_objects[collection]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_conforms_to_the_schema(case, alice, real_objects, live_server_url, fake_registry):  # type: ignore[no-untyped-def]
    _with_real_id(case, real_objects)
    try:
        case.call_and_validate(
            base_url=live_server_url, headers={"Authorization": f"Token {token_for(alice)}"}
        )
    finally:
        # A background run started by this case must not outlive the test's database.
        for execution_id in list(runner._runs):
            runner.wait(execution_id, timeout=10)
