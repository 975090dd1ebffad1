"""The README's curl examples, run with the real curl against a live server (the commands below are the ones
README.md shows, with http://127.0.0.1:8000 replaced by the live server's address): `make run`'s demo user,
the seeded catalog, a token, the agent list, a run and a streamed run. Providers are the fakes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from django.core.management import call_command

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command"),
]

README_BASE = "http://127.0.0.1:8000"

GET_TOKEN = (
    "curl -s -X POST http://127.0.0.1:8000/api/v1/auth/token/ "
    '-H "Content-Type: application/json" '
    """-d '{"username": "demo", "password": "demo-password"}'"""
)
LIST_AGENTS = 'curl -s http://127.0.0.1:8000/api/v1/agents/ -H "Authorization: Token $TOKEN"'
EXECUTE = (
    "curl -s -X POST http://127.0.0.1:8000/api/v1/agents/technical-writer/execute/ "
    '-H "Authorization: Token $TOKEN" -H "Content-Type: application/json" '
    """-d '{"input_data": {"task": "Write a one-paragraph README intro for a URL shortener"}}'"""
)
STREAM = (
    "curl -sN -X POST http://127.0.0.1:8000/api/v1/agents/technical-writer/execute/ "
    '-H "Authorization: Token $TOKEN" -H "Content-Type: application/json" '
    """-d '{"input_data": {"task": "Explain idempotency keys in two sentences"}, "stream": true}'"""
)


def run(command: str, base: str, token: str = "") -> str:
    completed = subprocess.run(
        ["bash", "-c", command.replace(README_BASE, base)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TOKEN": token, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return completed.stdout


def test_the_readme_curl_examples_work(live_server_url, fake_registry, fake_openai, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    call_command("seed_agents", verbosity=0)
    call_command("create_demo_user", stdout=io.StringIO())
    fake_openai.reply(text="Shorty turns long links into short ones.")
    fake_openai.reply(text="An idempotency key makes a retry safe. The server answers it once.")

    token = json.loads(run(GET_TOKEN, live_server_url))["token"]
    agents = json.loads(run(LIST_AGENTS, live_server_url, token))
    result = json.loads(run(EXECUTE, live_server_url, token))
    stream = run(STREAM, live_server_url, token)

    assert "technical-writer" in {agent["agent_id"] for agent in agents["results"]}
    assert result["success"] is True
    assert result["output"] == "Shorty turns long links into short ones."
    assert {"execution_id", "tokens_used", "cost", "platform_used", "model_used"} <= set(result)
    assert stream.startswith("id: 1\nevent: execution.created\n")
    assert "event: output.delta" in stream
    assert "event: execution.completed" in stream
