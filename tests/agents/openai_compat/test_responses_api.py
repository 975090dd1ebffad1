"""POST /v1/responses and GET /v1/responses/{id} through the official openai SDK against a live server, the
fake providers checking what they receive."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from apps.agents.models import AgentExecution, Conversation
from tests.factories import AgentFactory
from tests.fakes.server import Fault

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def helper(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice, agent_id="helper", system_prompt="You help.", preferred_platform="openai"
    )


def test_create_retrieve_and_continue_with_previous_response_id(
    client_for, fake_registry, fake_openai, helper, alice
):
    client = client_for(alice)
    fake_openai.reply(text="Hello Ada.")
    first = client.responses.create(model="helper", input="My name is Ada.", instructions="Be brief.")
    execution = AgentExecution.objects.get()
    assert first.id == f"resp_{execution.pk}" and first._request_id == str(execution.pk)
    assert (first.status, first.output_text, first.model) == ("completed", "Hello Ada.", "helper")
    assert first.usage.input_tokens == 11 and first.usage.output_tokens == 7
    assert fake_openai.requests[-1].body["messages"][0]["content"] == "You help.\n\nBe brief."

    fake_openai.reply(text="You are Ada.")
    second = client.responses.create(model="helper", input="What is my name?", previous_response_id=first.id)
    assert second.output_text == "You are Ada." and second.previous_response_id == first.id
    sent = fake_openai.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]
    # One conversation holds both turns; both calls are executions on it.
    (conversation,) = Conversation.objects.all()
    assert set(AgentExecution.objects.values_list("conversation_id", flat=True)) == {conversation.pk}

    again = client.responses.retrieve(second.id)
    assert (again.id, again.output_text, again.previous_response_id) == (second.id, "You are Ada.", first.id)
    # Continuing an earlier response would answer from the later turns too: refused.
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="helper", input="Again?", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"


def test_unstored_responses_cannot_be_retrieved_or_continued(
    client_for, fake_registry, fake_openai, helper, alice, bob
):
    client = client_for(alice)
    fake_openai.reply(text="ok")
    response = client.responses.create(model="helper", input="Hi", store=False)
    assert not Conversation.objects.exists() and AgentExecution.objects.count() == 1
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="helper", input="Hi", previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"
    fake_openai.reply(text="stored")
    stored = client.responses.create(model="helper", input="Hi")
    with pytest.raises(openai.NotFoundError):  # someone else's
        client_for(bob).responses.retrieve(stored.id)


def test_streamed_response_has_typed_events(client_for, fake_registry, fake_openai, helper, alice):
    fake_openai.reply(text="Hello there friend")
    with client_for(alice).responses.stream(model="helper", input="Hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-1] == "response.completed"
    assert final.output_text == "Hello there friend"
    assert final.id == f"resp_{AgentExecution.objects.get().pk}"


def test_function_tool_round_trip_over_previous_response_id(
    client_for, fake_registry, fake_openai, helper, alice
):
    client = client_for(alice)
    fake_openai.reply(
        text="", tool_calls=[{"id": "call_9", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    )
    first = client.responses.create(model="helper", input="Weather in Oslo?", tools=[WEATHER])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_9",
        "get_weather",
        {"city": "Oslo"},
    )
    assert fake_openai.requests[-1].body["tools"][0]["function"]["name"] == "get_weather"

    fake_openai.reply(text="Cold in Oslo.")
    second = client.responses.create(
        model="helper",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_9", "output": "-5C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "Cold in Oslo."
    sent = fake_openai.requests[-1].body["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_9"
    assert (sent[-1]["role"], sent[-1]["tool_call_id"], sent[-1]["content"]) == ("tool", "call_9", "-5C")


def test_function_calls_stream_as_typed_events(client_for, fake_registry, fake_openai, helper, alice):
    fake_openai.reply(
        text="", tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Rome"}}]
    )
    with client_for(alice).responses.stream(model="helper", input="Rome?", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    (call,) = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Rome"}


def test_text_format_json_schema_with_parse(client_for, fake_registry, fake_openai, helper, alice):
    fake_openai.reply(text='{"name": "Paris", "population": 2100000}')
    parsed = client_for(alice).responses.parse(model="helper", input="Capital of France?", text_format=City)
    assert parsed.output_parsed == City(name="Paris", population=2100000)
    sent = fake_openai.requests[-1].body["response_format"]["json_schema"]
    assert sent["schema"]["required"] == ["name", "population"] and sent["strict"] is True


def test_responses_errors_name_the_responses_parameter(client_for, fake_registry, fake_openai, helper, alice):
    client = client_for(alice)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="helper", input="Hi", tools=[{"type": "web_search"}])
    assert caught.value.body["param"].startswith("tools[0]")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="helper", input="Hi", max_output_tokens=0)
    assert caught.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as caught:  # a result for a call nobody made
        client.responses.create(
            model="helper",
            instructions="Be brief.",
            input=[
                {"role": "user", "content": "Hi"},
                {"type": "function_call_output", "call_id": "nope", "output": "x"},
            ],
        )
    assert caught.value.body["param"] == "input[1].call_id"
    assert (
        not fake_openai.requests and not AgentExecution.objects.exists() and not Conversation.objects.exists()
    )


def test_a_conversational_agent_continues_from_its_conversation(
    client_for, fake_registry, fake_openai, alice
):
    AgentFactory(owner=alice, agent_id="chatty", agent_type="conversational", preferred_platform="openai")
    client = client_for(alice)
    fake_openai.reply(text="Hi Bo.")
    first = client.responses.create(model="chatty", input="I am Bo.")
    fake_openai.reply(text="Bo.")
    client.responses.create(model="chatty", input="Who am I?", previous_response_id=first.id)
    sent = [(m["role"], m["content"]) for m in fake_openai.requests[-1].body["messages"][1:]]
    assert sent == [("user", "I am Bo."), ("assistant", "Hi Bo."), ("user", "Who am I?")]


def test_a_failed_run_is_a_502_or_a_failed_event(
    client_for, fake_registry, fake_openai, fake_anthropic, fake_gemini, alice
):
    AgentFactory(owner=alice, agent_id="fragile", preferred_platform="openai", max_retries=0)
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=500), times=2)
    client = client_for(alice)
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="fragile", input="Hi")
    assert caught.value.status_code == 502
    with client.responses.stream(model="fragile", input="Hi") as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    failed = AgentExecution.objects.order_by("-created_at").first()
    assert failed.status == "failed"
    assert client.responses.retrieve(f"resp_{failed.pk}").status == "failed"
