"""`manage.py run_agent`: in-process (call_command) and as a real subprocess, against the fake providers.

The fake provider servers speak the real wire formats; the command goes through the real ExecutionEngine, so
every run here is also a recorded AgentExecution.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from asgiref.sync import SyncToAsync
from django.core.management import CommandError, call_command
from django.db import connection, connections

from apps.agents.models import AgentExecution, ExecutionMode, ExecutionStatus
from tests.factories import AgentFactory, ConversationFactory, MessageFactory, UserFactory
from tests.fakes.live_server import wait_until
from tests.fakes.registry import OPENAI_TEST_KEY
from tests.fakes.server import Fault, Reply

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_executor_connections() -> Iterator[None]:
    """The command's async ORM calls run in asgiref's shared executor thread; its connections must not
    outlive the test (PostgreSQL refuses to drop a database with open sessions)."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


class RecordingStream(io.StringIO):
    """A stdout that remembers every write and can pretend to be a terminal."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.tty = tty

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def isatty(self) -> bool:
        return self.tty


def run_agent(*args: str, tty: bool = False) -> tuple[RecordingStream, RecordingStream]:
    out, err = RecordingStream(tty=tty), RecordingStream()
    call_command("run_agent", *args, stdout=out, stderr=err)
    return out, err


# ------------------------------------------------------------------------------- in-process
def test_stream_prints_each_delta_as_it_arrives_then_the_summary(fake_registry, fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="Streams arrive piece by piece", input_tokens=12, output_tokens=5))

    out, _ = run_agent("writer", "Say something", "--stream")

    execution = AgentExecution.objects.get(agent=agent)
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.mode == ExecutionMode.STREAM
    # One write per streamed word, in order, before anything of the summary.
    assert out.writes[:5] == ["Streams ", "arrive ", "piece ", "by ", "piece"]
    text = out.getvalue()
    assert text.startswith("Streams arrive piece by piece\n")
    assert "tokens     12 in, 5 out (17 total)" in text
    assert "platform   openai / gpt-4o-mini" in text
    assert f"execution  {execution.pk}" in text
    assert f"cost       ${execution.cost.normalize():f}" in text
    assert execution.cost > 0  # gpt-4o-mini has a price: the summary shows a real figure
    assert "\x1b[" not in text  # not a terminal: no colour codes
    # The request really asked the provider for a stream.
    assert fake_openai.requests[-1].body["stream"] is True


def test_without_stream_the_output_is_printed_once_the_run_is_over(fake_registry, fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="All at once"))

    out, _ = run_agent("writer", "Say something")

    assert out.getvalue().startswith("All at once\nstatus     completed\n")
    execution = AgentExecution.objects.get(agent=agent)
    assert execution.mode == ExecutionMode.SYNC
    assert execution.input_data == {"task": "Say something"}
    assert "stream" not in fake_openai.requests[-1].body or not fake_openai.requests[-1].body["stream"]


def test_json_prints_only_the_response_body(fake_registry, fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="Hello JSON", input_tokens=3, output_tokens=4))

    out, _ = run_agent("writer", "Say something", "--json", "--stream")

    body = json.loads(out.getvalue())  # nothing else on stdout: it parses as one document
    execution = AgentExecution.objects.get(agent=agent)
    assert body["success"] is True
    assert body["output"] == "Hello JSON"
    assert body["execution_id"] == str(execution.pk)
    assert (body["input_tokens"], body["output_tokens"], body["tokens_used"]) == (3, 4, 7)
    assert Decimal(str(body["cost"])) == execution.cost
    assert body["platform_used"] == "openai" and body["model_used"] == "gpt-4o-mini"


def test_a_terminal_gets_a_rich_summary(fake_registry, fake_openai) -> None:
    AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="Coloured"))

    out, _ = run_agent("writer", "Say something", tty=True)

    text = out.getvalue()
    assert "\x1b[" in text  # ANSI styling
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert plain.startswith("Coloured\n╭─ completed ─")  # the panel, titled with the status
    assert "│ platform   openai / gpt-4o-mini" in plain


def test_a_failed_run_exits_1_with_its_error_on_stderr(fake_registry, fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    # A 400 is neither retried nor sent to another platform: the run fails with the provider's message.
    fake_openai.fail(Fault("status", status=400, message="the request is malformed"))

    with pytest.raises(CommandError) as raised:
        run_agent("writer", "Say something", "--stream")

    assert raised.value.returncode == 1
    assert str(raised.value).startswith("provider_error:")
    assert "the request is malformed" in str(raised.value)
    assert AgentExecution.objects.get(agent=agent).status == ExecutionStatus.FAILED


def test_a_failed_run_with_json_still_prints_the_body(fake_registry, fake_openai) -> None:
    AgentFactory(agent_id="writer")
    fake_openai.fail(Fault("status", status=400, message="bad request"))
    out = RecordingStream()

    with pytest.raises(CommandError) as raised:
        call_command("run_agent", "writer", "Say something", "--json", stdout=out, stderr=RecordingStream())

    assert raised.value.returncode == 1
    body = json.loads(out.getvalue())
    assert body["success"] is False
    assert body["error"]["code"] == "provider_error"


def test_unknown_agent_exits_2_and_runs_nothing(fake_registry, fake_openai) -> None:
    with pytest.raises(CommandError) as raised:
        run_agent("no-such-agent", "Say something")

    assert raised.value.returncode == 2
    assert "not_found" in str(raised.value)
    assert not AgentExecution.objects.exists()
    assert fake_openai.requests == []


def test_invalid_input_exits_2_and_runs_nothing(fake_registry, fake_openai) -> None:
    AgentFactory(agent_id="writer")

    with pytest.raises(CommandError) as raised:
        run_agent("writer", "   ")

    assert raised.value.returncode == 2
    assert "input_data.task" in str(raised.value)
    assert not AgentExecution.objects.exists()


def test_inactive_agent_is_refused(fake_registry, fake_openai) -> None:
    AgentFactory(agent_id="writer", is_active=False)

    with pytest.raises(CommandError) as raised:
        run_agent("writer", "Say something")

    assert raised.value.returncode == 2
    assert "agent_inactive" in str(raised.value)


def test_user_runs_as_that_user_and_sees_only_their_agents(fake_registry, fake_openai) -> None:
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    AgentFactory(agent_id="alices", owner=alice)
    fake_openai.reply(Reply(text="Hi Alice"))

    run_agent("alices", "Say something", "--user", "alice")
    assert AgentExecution.objects.get().user == alice

    with pytest.raises(CommandError) as raised:
        run_agent("alices", "Say something", "--user", bob.username)
    assert raised.value.returncode == 2
    assert AgentExecution.objects.count() == 1


def test_conversation_continues_with_its_history_as_its_owner(fake_registry, fake_openai) -> None:
    alice = UserFactory(username="alice")
    agent = AgentFactory(agent_id="chat", owner=alice, agent_type="conversational")
    conversation = ConversationFactory(owner=alice, agent=agent)
    MessageFactory(conversation=conversation, position=1, role="user", content="My name is Alice.")
    MessageFactory(conversation=conversation, position=2, role="assistant", content="Hello Alice.")
    fake_openai.reply(Reply(text="Your name is Alice."))

    run_agent("chat", "What is my name?", "--conversation", str(conversation.pk))

    execution = AgentExecution.objects.get()
    assert execution.conversation_id == conversation.pk
    assert execution.user == alice
    sent = [m["content"] for m in fake_openai.requests[-1].body["messages"]]
    assert "My name is Alice." in sent and "Hello Alice." in sent


def test_someone_elses_conversation_is_not_found(fake_registry, fake_openai) -> None:
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    agent = AgentFactory(agent_id="chat", owner=alice, is_shared=True)
    conversation = ConversationFactory(owner=alice, agent=agent)

    with pytest.raises(CommandError) as raised:
        run_agent("chat", "Hi", "--conversation", str(conversation.pk), "--user", bob.username)

    assert raised.value.returncode == 2
    assert not AgentExecution.objects.exists()


# ------------------------------------------------------------------------------- a real process
def _database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    password = f":{quote(settings['PASSWORD'], safe='')}" if settings.get("PASSWORD") else ""
    return (
        f"postgres://{quote(settings['USER'], safe='')}{password}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}"
    )


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """A child started meanwhile gets Ctrl-C as from a terminal, also when the suite runs as a background job
    (`make test &`, nohup, a script's `&`: the shell starts those with SIGINT ignored). An ignored SIGINT is
    inherited, and Python started with it ignored installs no KeyboardInterrupt handler, so the child went on
    running; a handler here, by contrast, is the default in the child."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def manage(fake_openai, *args: str, start_only: bool = False):  # type: ignore[no-untyped-def]
    """`manage.py run_agent ...` in a new process: settings from the environment, as a user would run it,
    with OpenAI pointed at the fake and nothing else configured."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "OPENAI_API_KEY": OPENAI_TEST_KEY,
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",
        "ANTHROPIC_API_KEY": "",
        "GEMINI_API_KEY": "",
        "LOCAL_ENABLED": "false",
        "PLATFORM_FALLBACK_ORDER": "openai",
        "MODEL_PRICES": "{}",
        "RETRY_BASE_DELAY": "0.01",
    }
    command = [sys.executable, "manage.py", "run_agent", *args]
    if start_only:
        with _sigint_not_ignored():
            return subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
    return subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_streams_and_exits_0(fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="From a real process"))

    done = manage(fake_openai, "writer", "Say something", "--stream")

    assert done.returncode == 0, done.stderr
    execution = AgentExecution.objects.get(agent=agent)
    assert execution.status == ExecutionStatus.COMPLETED and execution.mode == ExecutionMode.STREAM
    assert done.stdout.startswith("From a real process\n")
    assert f"execution  {execution.pk}" in done.stdout
    assert OPENAI_TEST_KEY not in done.stdout + done.stderr


def test_subprocess_json_and_failure_exit_code(fake_openai) -> None:
    AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text="JSON from a process"))

    done = manage(fake_openai, "writer", "Say something", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == "JSON from a process"

    fake_openai.fail(Fault("status", status=400, message="rejected by the provider"))
    failed = manage(fake_openai, "writer", "Say something", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["success"] is False
    assert "provider_error" in failed.stderr and "rejected by the provider" in failed.stderr

    missing = manage(fake_openai, "nobody", "Say something")
    assert missing.returncode == 2
    assert "not_found" in missing.stderr


def test_ctrl_c_cancels_the_run_and_closes_the_upstream_request(fake_openai) -> None:
    agent = AgentFactory(agent_id="writer")
    fake_openai.reply(Reply(text=" ".join(["slow"] * 200), chunk_delay=0.2))
    env_process = manage(fake_openai, "writer", "Say something", "--stream", start_only=True)
    try:
        assert wait_until(
            lambda: (
                AgentExecution.objects.filter(agent=agent, status=ExecutionStatus.RUNNING).exists()
                and fake_openai.requests
            ),
            timeout=60,
        ), "the run never started"
        # The first words are out: the process is inside the stream, not still starting up.
        assert env_process.stdout is not None
        assert env_process.stdout.read(5) == "slow "
        env_process.send_signal(signal.SIGINT)
        _, stderr = env_process.communicate(timeout=60)
    finally:
        if env_process.poll() is None:
            env_process.kill()

    assert env_process.returncode == 130, stderr
    assert "cancelled" in stderr
    assert AgentExecution.objects.get(agent=agent).status == ExecutionStatus.CANCELLED
    assert fake_openai.wait_for_disconnect(timeout=10)
