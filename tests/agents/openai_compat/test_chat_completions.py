"""POST /v1/chat/completions through the official openai SDK against a live server; the agents' provider is the
fake OpenAI / Anthropic / Gemini servers (fake_registry). README examples are the first two tests."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async

from apps.agents.catalog.loader import load_catalog
from apps.agents.catalog.seed import seed_catalog
from apps.agents.models import Agent, AgentExecution, ExecutionStatus
from tests.agents.openai_compat.conftest import token_for
from tests.factories import AgentFactory
from tests.fakes.live_server import async_wait_until, leave_during_admission, wait_until
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "Write one user story for a password reset."


def only_execution() -> AgentExecution:
    (execution,) = AgentExecution.objects.all()
    return execution


@pytest.fixture
def greeter(alice) -> Agent:  # type: ignore[no-untyped-def]
    return AgentFactory(
        owner=alice, agent_id="greeter", system_prompt="You greet people.", preferred_platform="openai"
    )


def test_readme_sync_example_business_analyst(
    client_for, fake_registry, fake_openai, business_analyst, business_analyst_entry, alice
):
    answer = business_analyst_entry.example.output
    fake_openai.reply(text=json.dumps(answer), input_tokens=420, output_tokens=180)
    client = client_for(alice)

    completion = client.chat.completions.create(
        model="business-analyst", messages=[{"role": "user", "content": TASK}]
    )

    execution = only_execution()
    assert completion.id == f"chatcmpl-{execution.pk}"
    assert completion.object == "chat.completion"
    assert completion.model == "business-analyst"
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert json.loads(choice.message.content) == answer
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (420, 180)
    assert completion.usage.total_tokens == 600
    # An ordinary execution of the agent, by alice, recorded like any other.
    assert (execution.agent_id, execution.user_id, execution.mode) == (business_analyst.pk, alice.pk, "sync")
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.input_data == {"task": TASK}
    assert (execution.input_tokens, execution.output_tokens) == (420, 180) and execution.cost > 0
    # The agent's own system prompt and settings went to the provider.
    sent = fake_openai.requests[0].body
    assert sent["messages"][0] == {"role": "system", "content": business_analyst.system_prompt}
    assert sent["messages"][-1]["content"].startswith(TASK)
    assert sent["temperature"] == 0.5


def test_readme_streaming_curl(live_server_url, fake_registry, fake_openai, alice):
    """The README's curl, run as written (plus the test server's address and alice's token)."""
    import subprocess

    from tests.agents.openai_compat.conftest import token_for

    writer = next(entry for entry in load_catalog() if entry.agent_id == "technical-writer")
    seed_catalog(entries=[writer])
    answer = "An API token is a secret string that identifies you to the service."
    fake_openai.reply(text=answer, input_tokens=9, output_tokens=14)
    body = (
        '{"model": "technical-writer", "stream": true, "stream_options": {"include_usage": true},\n'
        '       "messages": [{"role": "user", "content": "Explain what an API token is in one sentence."}]}'
    )
    command = [
        "curl", "-sN", f"{live_server_url}/v1/chat/completions",
        "-H", f"Authorization: Bearer {token_for(alice)}", "-H", "Content-Type: application/json",
        "-d", body,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout

    events = [line.removeprefix("data: ") for line in output.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    execution = only_execution()
    assert {chunk["id"] for chunk in chunks} == {f"chatcmpl-{execution.pk}"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == answer
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23}
    assert (execution.agent_slug, execution.mode, execution.status) == (
        "technical-writer",
        "stream",
        ExecutionStatus.COMPLETED,
    )
    assert fake_openai.requests[0].body["messages"][-1]["content"].startswith("Explain what an API token is")


def test_stream_through_the_sdk_assembles_the_fake_reply(
    client_for, fake_registry, fake_openai, greeter, alice
):
    reply = "One two three four five six seven."
    fake_openai.reply(text=reply, input_tokens=5, output_tokens=7)

    stream = client_for(alice).chat.completions.create(
        model="greeter",
        messages=[{"role": "user", "content": "Count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # ends at [DONE]

    execution = only_execution()
    assert {chunk.id for chunk in chunks} == {f"chatcmpl-{execution.pk}"}
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == reply == execution.output
    assert len(content) == len(reply.split(" "))  # token by token, not one block at the end
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(
    client_for, fake_registry, fake_openai, greeter, alice
):
    fake_openai.reply(text="Hi.")
    chunks = list(
        client_for(alice).chat.completions.create(
            model="greeter", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_request_settings_override_the_agent_for_that_run_only(
    client_for, fake_registry, fake_openai, greeter, alice
):
    fake_openai.reply(text="Bonjour.")

    client_for(alice).chat.completions.create(
        model="greeter",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Say hello"},
        ],
        temperature=1.5,
        max_tokens=64,
    )

    sent = fake_openai.requests[0].body
    assert sent["messages"][0] == {"role": "system", "content": "You greet people.\n\nAnswer in French."}
    assert (sent["temperature"], sent["max_tokens"]) == (1.5, 64)
    greeter.refresh_from_db()
    assert (greeter.system_prompt, greeter.temperature, greeter.max_tokens) == (
        "You greet people.",
        None,
        None,
    )
    assert only_execution().context == {
        "metadata": {"openai_compat": {"temperature": 1.5, "max_tokens": 64, "system": "Answer in French."}}
    }


def test_earlier_messages_are_the_conversation_of_a_conversational_agent(
    client_for, fake_registry, fake_openai, alice
):
    AgentFactory(owner=alice, agent_id="chatty", agent_type="conversational", system_prompt="Be nice.")
    fake_openai.reply(text="You said your name is Ada.")

    client_for(alice).chat.completions.create(
        model="chatty",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
        ],
    )

    assert fake_openai.requests[0].body["messages"] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert only_execution().context["conversation_history"][1]["content"] == "Nice to meet you, Ada."


def test_a_completion_moves_the_metrics(client_for, fake_registry, fake_openai, greeter, alice):
    from apps.agents.metrics import REGISTRY

    def completed() -> float:
        value = REGISTRY.get_sample_value(
            "agents_executions_total", {"agent": "greeter", "platform": "openai", "status": "completed"}
        )
        return value or 0.0

    before = completed()
    client_for(alice).chat.completions.create(model="greeter", messages=[{"role": "user", "content": "Hi"}])
    assert completed() == before + 1


# -------------------------------------------------------------------------------- errors
def test_unknown_model_is_not_found_in_openai_shape(client_for, fake_registry, alice):
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(alice).chat.completions.create(
            model="no-such-agent", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 404
    assert caught.value.body == {
        "message": "The model `no-such-agent` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert not AgentExecution.objects.exists()


def test_someone_elses_private_agent_is_not_found(client_for, fake_registry, fake_openai, alice, bob):
    AgentFactory(owner=bob, agent_id="bobs-secret")
    with pytest.raises(openai.NotFoundError):
        client_for(alice).chat.completions.create(
            model="bobs-secret", messages=[{"role": "user", "content": "x"}]
        )
    assert not fake_openai.requests and not AgentExecution.objects.exists()


@pytest.mark.parametrize("api_key", ["not-a-real-token", "0" * 40])
def test_a_bad_token_is_an_authentication_error(client_for, fake_registry, greeter, alice, api_key):
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(alice, api_key=api_key).chat.completions.create(
            model="greeter", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["code"] == "invalid_api_key"
    assert not AgentExecution.objects.exists()


def test_provider_failing_after_retries_is_502_and_not_retried_by_the_sdk(
    client_for, fake_registry, fake_openai, fake_anthropic, fake_gemini, greeter, alice, instant_retries
):
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=503, message="overloaded"), times=3)

    with pytest.raises(openai.APIStatusError) as caught:
        # The SDK's default retries stay on: the answer tells it not to re-send (x-should-retry: false).
        client_for(alice, max_retries=2).chat.completions.create(
            model="greeter", messages=[{"role": "user", "content": "Hi"}]
        )

    error = caught.value
    assert error.status_code == 502
    assert set(error.body) == {"message", "type", "param", "code"}
    assert (error.body["type"], error.body["code"]) == ("upstream_error", "provider_error")
    assert error.body["message"].startswith("The agent run failed: every platform failed")
    execution = only_execution()  # exactly one run: neither the SDK nor anyone else re-sent it
    assert error.response.headers["X-Execution-Id"] == str(execution.pk)
    assert execution.status == ExecutionStatus.FAILED
    assert len(execution.attempts) == 9 and len(instant_retries) == 6  # the engine did retry and fall back
    assert len(fake_openai.requests) == len(fake_anthropic.requests) == len(fake_gemini.requests) == 3


def test_a_stream_failing_before_any_output_is_an_http_error(
    client_for, fake_registry, fake_openai, fake_anthropic, fake_gemini, greeter, alice
):
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.fail(Fault("status", status=500), times=3)
    with pytest.raises(openai.APIStatusError) as caught:
        client_for(alice).chat.completions.create(
            model="greeter", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    assert caught.value.status_code == 502 and caught.value.body["code"] == "provider_error"
    execution = only_execution()
    assert (execution.mode, execution.status) == ("stream", ExecutionStatus.FAILED)


def test_a_stream_failing_after_output_ends_with_an_error_event(
    client_for, fake_registry, fake_openai, greeter, alice
):
    fake_openai.fail(Fault("cut_stream", after_chunks=2))
    stream = client_for(alice).chat.completions.create(
        model="greeter", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert caught.value.body["code"] == "provider_error"
    assert "".join(c.choices[0].delta.content or "" for c in received)  # some text came before the error
    assert only_execution().status == ExecutionStatus.FAILED


def test_client_disconnect_mid_stream_cancels_the_run(client_for, fake_registry, fake_openai, greeter, alice):
    fake_openai.reply(Reply(text=" ".join(["word"] * 200), chunk_delay=0.05))
    stream = client_for(alice).chat.completions.create(
        model="greeter", messages=[{"role": "user", "content": "Talk"}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()

    assert wait_until(lambda: only_execution().status == ExecutionStatus.CANCELLED)
    assert fake_openai.wait_for_disconnect()  # the upstream request was closed too
    execution = only_execution()
    assert execution.error_code == "cancelled_by_user"
    assert execution.output and execution.output.startswith("word")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
    ],
)
def test_invalid_requests_are_400_naming_the_parameter(
    client_for, fake_registry, greeter, alice, change, param
):
    request = {"model": "greeter", "messages": [{"role": "user", "content": "Hi"}], **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(alice).chat.completions.create(**request)
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"
    assert not AgentExecution.objects.exists()


def test_rate_limit_is_429_with_retry_after(client_for, fake_registry, fake_openai, greeter, alice, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "execute": "1/min"},
    }
    client = client_for(alice)
    client.chat.completions.create(model="greeter", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="greeter", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert AgentExecution.objects.count() == 1


def test_earlier_messages_reach_a_task_agent(client_for, fake_registry, fake_openai, greeter, alice):
    fake_openai.reply(text="Hello again, Ada.")
    client_for(alice).chat.completions.create(
        model="greeter",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "Greet me again."},
        ],
    )
    contents = [message["content"] for message in fake_openai.requests[0].body["messages"]]
    assert "My name is Ada." in contents


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
async def test_a_client_that_leaves_while_its_run_is_admitted_leaves_no_running_row(
    live_server_url, fake_registry, fake_openai, alice, monkeypatch, stream
):
    """The facade admits through the engine's async entry points (one unit of database work): a client gone
    during it has the row recorded cancelled at once, as on the native API (tests/agents/api/test_sse.py)."""
    await sync_to_async(AgentFactory)(owner=alice, agent_id="greeter", preferred_platform="openai")
    headers = {"Authorization": f"Bearer {await sync_to_async(token_for)(alice)}"}
    body = {"model": "greeter", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with httpx.AsyncClient(base_url=live_server_url, timeout=30) as client:
        await leave_during_admission(
            monkeypatch, lambda: client.post("/v1/chat/completions", json=body, headers=headers)
        )

    async def ended() -> bool:
        row = await AgentExecution.objects.afirst()
        return row is not None and row.status != ExecutionStatus.RUNNING

    assert await async_wait_until(ended, limit=10)
    execution = await AgentExecution.objects.aget()
    assert execution.status == ExecutionStatus.CANCELLED
    assert fake_openai.requests == []  # nothing was sent to the provider
