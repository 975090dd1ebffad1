"""`manage.py eval_catalog`: run every catalog agent on its sample task on each configured platform.

    manage.py eval_catalog                       # every agent, every configured platform, 60 s each
    manage.py eval_catalog --platform local --agent business-analyst --agent ux-writer --timeout 90
    manage.py eval_catalog --json bench/results/eval_catalog.json
    manage.py eval_catalog --platform local --task "Say hello in five words."   # one task for every agent

Each run goes through the engine exactly as an API run does (retries, re-asks, schema validation, the
deadline), on a registry holding only the platform under test, so nothing falls back elsewhere. Nothing is
written to the database. The local model is loaded before the first run. The task is the catalog entry's `example.input` (else a one-line greeting).
Prints a table: agent, platform, outcome (valid / invalid / refused / timeout / error), tokens, seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apps.agents.catalog.loader import CatalogEntry, load_catalog
from apps.agents.engine.context import AgentConfig, AgentResult
from apps.agents.engine.conversational_agent import ConversationalAgent
from apps.agents.engine.schema_policy import SchemaLimits, first_error
from apps.agents.engine.task_agent import TaskAgent
from apps.platforms.local_model import REFUSAL_PREFIX
from apps.platforms.registry import PlatformRegistry, get_registry

T = TypeVar("T")

DEFAULT_TASK = {"task": "Say hello in five words."}


@dataclass(slots=True)
class Row:
    agent: str
    platform: str
    outcome: str  # valid | invalid | refused | timeout | error
    input_tokens: int
    output_tokens: int
    seconds: float
    detail: str = ""


def config_for(entry: CatalogEntry, platform: str, timeout: float | None) -> AgentConfig:
    return AgentConfig(
        agent_id=entry.agent_id,
        name=entry.name,
        agent_type=entry.agent_type,  # type: ignore[arg-type]
        system_prompt=entry.system_prompt,
        preferred_platform=platform,
        model=entry.model if entry.preferred_platform in ("", platform) else "",
        temperature=entry.temperature,
        max_tokens=entry.max_tokens,
        output_schema=entry.output_schema,
        tools=entry.tools,
        capabilities=entry.capabilities,
        timeout_seconds=float(timeout if timeout else entry.timeout_seconds),
        max_retries=entry.max_retries,
        history_window=entry.history_window,
        max_tool_calls=entry.max_tool_calls,
    )


def outcome_of(entry: CatalogEntry, result: AgentResult) -> tuple[str, str]:
    if result.success:
        if entry.output_schema is not None:
            # The engine validated it; say it twice (a valid run must not be counted on the engine's word).
            error = first_error(result.output, entry.output_schema, SchemaLimits())
            return ("invalid", error.message) if error is not None else ("valid", "")
        return ("valid", "") if str(result.output or "").strip() else ("invalid", "empty answer")
    assert result.error is not None
    message = result.error.message
    if REFUSAL_PREFIX in message:
        # Refused up front, or only when re-asked after an answer that failed validation.
        answered = any(a.status == "ok" for a in result.attempts)
        return ("invalid", f"re-ask refused: {message}") if answered else ("refused", message)
    if result.error.code == "timeout":
        return "timeout", message
    if result.error.code == "invalid_output":
        return "invalid", message
    return "error", message


async def run_one(
    entry: CatalogEntry,
    name: str,
    registry: PlatformRegistry,
    deadline: float | None,
    task: str | None = None,
) -> Row:
    single = PlatformRegistry({name: registry.get(name)}, fallback_order=[name], default=name)
    config = config_for(entry, name, deadline)
    agent_class = ConversationalAgent if entry.agent_type == "conversational" else TaskAgent
    agent = agent_class(config, single)
    if task is not None:
        input_data = {"task": task}
    else:
        input_data = dict(entry.example.input) if entry.example is not None else dict(DEFAULT_TASK)
    started = time.perf_counter()
    result = await agent.execute(input_data)
    seconds = time.perf_counter() - started
    outcome, detail = outcome_of(entry, result)
    return Row(entry.agent_id, name, outcome, result.input_tokens, result.output_tokens, seconds, detail)


class Command(BaseCommand):
    help = "Run every catalog agent on a sample task on each configured platform and tabulate the outcome."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--platform", action="append", help="Only this platform (repeatable).")
        parser.add_argument("--agent", action="append", help="Only this catalog agent (repeatable).")
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="Each run's deadline in seconds (0: the agent's own)."
        )
        parser.add_argument("--json", dest="json_path", help="Also write the rows to this JSON file.")
        parser.add_argument("--task", help="Give every agent this task instead of its example's input.")

    def handle(self, *args: Any, **options: Any) -> None:
        registry = get_registry()
        platforms = options["platform"] or registry.names()
        unknown = [p for p in platforms if p not in registry]
        if unknown:
            raise CommandError(f"not configured: {', '.join(unknown)} (configured: {registry.names()})")
        entries = [e for e in load_catalog() if not options["agent"] or e.agent_id in options["agent"]]
        if not entries:
            raise CommandError("no catalog agent matches --agent")
        work = self._run(entries, platforms, registry, options["timeout"] or None, options["task"])
        rows = asyncio.run(closing(registry, work))
        console = Console(file=self.stdout, width=140)
        console.print(table(rows))
        if options["json_path"]:
            path = Path(options["json_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
            self.stdout.write(f"wrote {path}")

    async def _run(
        self,
        entries: list[CatalogEntry],
        platforms: list[str],
        registry: PlatformRegistry,
        deadline: float | None,
        task: str | None,
    ) -> list[Row]:
        for name in platforms:
            load = getattr(registry.get(name), "load", None)
            if load is not None:
                # The local model loads (and calibrates its speed) once per process, as in a server that has
                # served one request; a run's seconds are then the run's own.
                await load()
        rows: list[Row] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as progress:
            bar = progress.add_task("catalog", total=len(entries) * len(platforms))
            for entry in entries:
                for name in platforms:
                    progress.update(bar, description=f"{entry.agent_id} on {name}")
                    rows.append(await run_one(entry, name, registry, deadline, task))
                    progress.advance(bar)
        return rows


async def closing(registry: PlatformRegistry, work: Awaitable[T]) -> T:
    """`work`, then the registry's clients closed: their connections belong to this loop, which ends with the
    command (left open, the aiohttp sessions are reported "Unclosed client session" when collected)."""
    try:
        return await work
    finally:
        await registry.aclose()


def table(rows: list[Row]) -> Table:
    out = Table(title="Catalog agents on their sample task")
    for column in ("agent", "platform", "outcome", "tokens in/out", "seconds", "detail"):
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(
            row.agent,
            row.platform,
            row.outcome,
            f"{row.input_tokens}/{row.output_tokens}",
            f"{row.seconds:.1f}",
            row.detail[:160],
        )
    return out


__all__ = ["Row", "config_for", "outcome_of", "run_one"]
