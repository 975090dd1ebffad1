"""A client's `response_format` and tool `parameters` schemas pass the same schema policy as an agent's
output_schema (openai_compat/schema_check.py): a reference to a URL or a file is never fetched, a pattern
RE2 cannot run is refused, and nothing reaches the provider or the database."""

from __future__ import annotations

import openai
import pytest

from apps.agents.models import AgentExecution
from tests.agents.security.test_schema_policy import MARKER, hostile_schemas
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(f'{{"type": "string", "enum": ["{MARKER}"]}}')
    return path


def refused(client, **request) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "Paris?"}], **request
        )
    return caught.value


def test_hostile_response_formats_and_tool_schemas_are_refused(
    client_for, fake_registry, fake_openai, alice, listener, secret_file
):
    AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai")
    client = client_for(alice)
    schemas = hostile_schemas(listener.port, secret_file)
    # `^(a+)+$` is fine here: patterns run on RE2, in linear time. What RE2 cannot run is refused.
    schemas["backreference-pattern"] = {"type": "string", "pattern": "^(a+)\\1$"}
    schemas["lookahead-pattern"] = {"type": "object", "patternProperties": {"(?=x)": {}}}
    schemas["huge-count"] = {"type": "string", "minLength": 10**9}
    for name, schema in schemas.items():
        error = refused(
            client,
            response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        )
        assert error.body["param"].startswith("response_format"), (name, error.body)
        assert MARKER not in str(error.body)
        error = refused(
            client,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": schema}}],
        )
        assert error.body["param"] == "tools[0].function.parameters", (name, error.body)
    assert listener.connections == 0
    assert fake_openai.requests == []
    assert not AgentExecution.objects.exists()
