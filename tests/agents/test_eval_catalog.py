"""`manage.py eval_catalog`: every catalog agent on each configured platform, tabulated (fake platform here)."""

from __future__ import annotations

import io
import json

from django.core.management import call_command

from apps.agents.catalog.loader import load_catalog
from apps.agents.engine.context import AgentError, AgentResult, Attempt
from apps.agents.management.commands.eval_catalog import outcome_of
from apps.platforms.local_model import REFUSAL_PREFIX
from apps.platforms.registry import PlatformRegistry
from tests.fakes.platform import FakePlatform
from tests.fakes.registry import registry_installed

CATALOG = {entry.agent_id: entry for entry in load_catalog()}


def test_eval_catalog_runs_each_agent_and_tabulates_outcome_tokens_and_time(tmp_path) -> None:
    fake = FakePlatform("openai")
    for _ in range(3):  # code-reviewer: the first answer and both re-asks are not JSON
        fake.reply("not json at all")
    fake.reply("Hello there, friend of mine.")  # technical-writer
    out = io.StringIO()
    with registry_installed(PlatformRegistry({"openai": fake}, fallback_order=["openai"])):
        call_command(
            "eval_catalog",
            "--agent",
            "technical-writer",
            "--agent",
            "code-reviewer",
            "--json",
            str(tmp_path / "rows.json"),
            stdout=out,
        )

    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["agent"], r["platform"], r["outcome"]) for r in rows] == [
        ("code-reviewer", "openai", "invalid"),
        ("technical-writer", "openai", "valid"),
    ]
    assert rows[1]["input_tokens"] == 10 and rows[1]["output_tokens"] == 5  # the fake's reported usage
    assert "code-reviewer" in out.getvalue() and "technical-writer" in out.getvalue()
    assert fake.closed == 1  # the command's loop ends with it: so do its clients' connections


def test_a_refusal_is_refused_only_when_nothing_was_answered() -> None:
    entry = CATALOG["business-analyst"]
    error = AgentError(
        "provider_error", f"every platform failed; last error: local unavailable: {REFUSAL_PREFIX}"
    )
    refused = AgentResult(success=False, error=error, attempts=[Attempt("local", "m", "unavailable", 0.0)])
    reasked = AgentResult(
        success=False,
        error=error,
        attempts=[Attempt("local", "m", "ok", 9000.0), Attempt("local", "m", "unavailable", 0.0)],
    )

    assert outcome_of(entry, refused)[0] == "refused"
    assert outcome_of(entry, reasked)[0] == "invalid"


def test_a_successful_structured_run_is_valid_only_if_its_output_matches_the_full_schema() -> None:
    entry = CATALOG["ux-writer"]
    assert entry.example is not None and entry.example.output is not None

    assert outcome_of(entry, AgentResult(success=True, output=entry.example.output)) == ("valid", "")
    outcome, detail = outcome_of(entry, AgentResult(success=True, output={"unexpected": 1}))
    assert outcome == "invalid" and detail


def test_task_gives_every_agent_the_same_task(tmp_path) -> None:
    fake = FakePlatform("openai")
    fake.reply("Hello there, friend of mine.")
    with registry_installed(PlatformRegistry({"openai": fake}, fallback_order=["openai"])):
        call_command(
            "eval_catalog",
            "--agent",
            "technical-writer",
            "--task",
            "Say hello in five words.",
            stdout=io.StringIO(),
        )

    (request,) = fake.requests
    assert request.messages[-1].content.startswith("Say hello in five words.")
