"""The OpenAI clients people use, pinned in the dev dependencies, against a live server: LangChain's
ChatOpenAI, pydantic-ai, instructor and the llm CLI (the openai SDK itself: test_client_features.py and
test_responses_api.py). The fake OpenAI server behind the agent checks what it receives (tests/fakes/
openai_server.request_problem) and each test asserts the schema, tools or parameters that reached it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from apps.agents.models import AgentExecution
from tests.agents.openai_compat.conftest import token_for
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)

PARIS = {"name": "Paris", "population": 2100000}


class City(BaseModel):
    name: str
    population: int


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


@pytest.fixture
def helper(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice, agent_id="helper", system_prompt="You help.", preferred_platform="openai"
    )


@pytest.fixture
def base_url(live_server_url: str) -> str:
    return f"{live_server_url}/v1"


def bodies(fake) -> list[dict]:  # type: ignore[no-untyped-def]
    return [request.body for request in fake.requests]


def tool_names(body: dict) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools") or ()]


# ------------------------------------------------------------------------------------------- LangChain
@pytest.fixture
def chat_openai(base_url, helper, alice):  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    def make(**kwargs):  # type: ignore[no-untyped-def]
        return ChatOpenAI(
            model="helper", base_url=base_url, api_key=token_for(alice), max_retries=0, **kwargs
        )

    return make


def test_langchain_with_structured_output_default_json_schema(chat_openai, fake_registry, fake_openai):
    fake_openai.reply(text=json.dumps(PARIS))
    city = chat_openai().with_structured_output(City).invoke("Capital of France?")
    assert city == City(**PARIS)
    (body,) = bodies(fake_openai)
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["name", "population"]


def test_langchain_with_structured_output_function_calling(chat_openai, fake_registry, fake_openai):
    fake_openai.reply(text="", tool_calls=[{"id": "c1", "name": "City", "arguments": PARIS}])
    city = chat_openai().with_structured_output(City, method="function_calling").invoke("Capital of France?")
    assert city == City(**PARIS)
    (body,) = bodies(fake_openai)
    assert tool_names(body) == ["City"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "City"}}


def test_langchain_bind_tools_round_trip(chat_openai, fake_registry, fake_openai):
    from langchain_core.messages import HumanMessage, ToolMessage

    model = chat_openai().bind_tools([get_weather])
    fake_openai.reply(
        text="", tool_calls=[{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    )
    messages = [HumanMessage("Weather in Paris?")]
    ai = model.invoke(messages)
    assert ai.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}
    ]
    fake_openai.reply(text="It is sunny in Paris.")
    messages += [ai, ToolMessage(get_weather("Paris"), tool_call_id="c1")]
    assert model.invoke(messages).content == "It is sunny in Paris."
    second = bodies(fake_openai)[-1]
    assert tool_names(second) == ["get_weather"]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "sunny in Paris"}


def test_langchain_use_responses_api(chat_openai, fake_registry, fake_openai):
    fake_openai.reply(text="Hello from the Responses API.")
    answer = chat_openai(use_responses_api=True).invoke("Hi")
    assert answer.text == "Hello from the Responses API."
    assert answer.id == f"resp_{AgentExecution.objects.get().pk}"


# ------------------------------------------------------------------------------------------- pydantic-ai
@pytest.fixture
def provider(base_url, helper, alice):  # type: ignore[no-untyped-def]
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIProvider(base_url=base_url, api_key=token_for(alice))


def test_pydantic_ai_default_tool_output(provider, fake_registry, fake_openai):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel

    fake_openai.reply(text="", tool_calls=[{"id": "c1", "name": "final_result", "arguments": PARIS}])
    agent = Agent(OpenAIChatModel("helper", provider=provider), output_type=City)
    assert agent.run_sync("Capital of France?").output == City(**PARIS)
    (body,) = bodies(fake_openai)
    assert tool_names(body) == ["final_result"] and body["tool_choice"] == "required"


def test_pydantic_ai_native_output(provider, fake_registry, fake_openai):
    from pydantic_ai import Agent, NativeOutput
    from pydantic_ai.models.openai import OpenAIChatModel

    fake_openai.reply(text=json.dumps(PARIS))
    agent = Agent(OpenAIChatModel("helper", provider=provider), output_type=NativeOutput(City))
    assert agent.run_sync("Capital of France?").output == City(**PARIS)
    (body,) = bodies(fake_openai)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["name", "population"]


def test_pydantic_ai_tool(provider, fake_registry, fake_openai):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel

    agent = Agent(OpenAIChatModel("helper", provider=provider), tools=[get_weather])
    fake_openai.reply(
        text="", tool_calls=[{"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    )
    fake_openai.reply(text="Sunny in Oslo.")
    assert agent.run_sync("Weather in Oslo?").output == "Sunny in Oslo."
    first, second = bodies(fake_openai)
    assert tool_names(first) == ["get_weather"]
    assert second["messages"][-1]["role"] == "tool" and second["messages"][-1]["content"] == "sunny in Oslo"
    assert AgentExecution.objects.count() == 2  # one run per request: the client ran its tool in between


def test_pydantic_ai_openai_responses_model(provider, fake_registry, fake_openai):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel

    fake_openai.reply(text=json.dumps(PARIS))
    agent = Agent(OpenAIResponsesModel("helper", provider=provider))
    assert json.loads(agent.run_sync("Capital of France?").output) == PARIS
    assert AgentExecution.objects.count() == 1


# ------------------------------------------------------------------------------------------- instructor
# instructor 1.17 pins jiter<0.15, which openai 3.57 excludes, so it cannot be a dev dependency: it is installed
# into the venv with `pip install --no-deps 'instructor==1.17.0'` (see pyproject.toml).
instructor = pytest.importorskip("instructor", reason="instructor is installed separately (pip --no-deps)")


@pytest.fixture
def openai_client(client_for, alice):  # type: ignore[no-untyped-def]
    return client_for(alice)


def test_instructor_tools_mode(openai_client, fake_registry, fake_openai, helper):
    fake_openai.reply(text="", tool_calls=[{"id": "c1", "name": "City", "arguments": PARIS}])
    client = instructor.from_openai(openai_client, mode=instructor.Mode.TOOLS)
    city = client.chat.completions.create(
        model="helper", response_model=City, messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert city.model_dump() == PARIS
    (body,) = bodies(fake_openai)
    assert tool_names(body) == ["City"] and body["tool_choice"]["function"]["name"] == "City"


def test_instructor_json_schema_mode(openai_client, fake_registry, fake_openai, helper):
    fake_openai.reply(text=json.dumps(PARIS))
    client = instructor.from_openai(openai_client, mode=instructor.Mode.JSON_SCHEMA)
    city = client.chat.completions.create(
        model="helper", response_model=City, messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert city.model_dump() == PARIS
    (body,) = bodies(fake_openai)
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["name", "population"]


# ------------------------------------------------------------------------------------------- the llm CLI
@pytest.fixture
def llm_cli(tmp_path: Path, base_url: str, helper, alice):  # type: ignore[no-untyped-def]
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: helper\n  model_name: helper\n  api_base: {base_url}\n"
        "  api_key_name: agents\n  supports_tools: true\n  supports_schema: true\n"
    )
    llm = Path(sys.executable).with_name("llm")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_OPENAI_SHOW_RESPONSES": ""}

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(llm), "-m", "helper", "--key", token_for(alice), "--no-log", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def test_llm_cli_schema(llm_cli, fake_registry, fake_openai):
    fake_openai.reply(text=json.dumps(PARIS))
    assert json.loads(llm_cli("--schema", "name, population int", "Capital of France?")) == PARIS
    (body,) = bodies(fake_openai)
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["population"]["type"] == "integer"


def test_llm_cli_tools(llm_cli, fake_registry, fake_openai):
    fake_openai.reply(text="", tool_calls=[{"id": "c1", "name": "llm_version", "arguments": {}}])
    fake_openai.reply(text="You run llm.")
    assert llm_cli("-T", "llm_version", "Which llm version?").strip() == "You run llm."
    first, second = bodies(fake_openai)
    assert tool_names(first) == ["llm_version"]
    assert second["messages"][-1]["role"] == "tool" and second["messages"][-1]["tool_call_id"] == "c1"
