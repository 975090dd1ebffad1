"""`manage.py run_agent <slug> "task"`: run an agent from a shell, through the same ExecutionEngine as the API.

    manage.py run_agent code-reviewer "Review: def f(x): return x*2" --stream
    echo "Summarise this" | manage.py run_agent technical-writer - --json

Every run is an AgentExecution like any other (mode sync, or stream with --stream). Output goes to stdout;
the summary (tokens, cost, time, platform/model, execution id) follows it, drawn with rich when stdout is a
terminal and as plain `key  value` lines otherwise. `--json` prints only the seed's response body.

Engine log lines go to stderr, INFO ones only with `-v 2`.

Exit codes: 0 the run completed; 1 it ran and failed (provider error, timeout, invalid output, cancelled);
2 nothing ran (unknown agent, user or conversation, inactive agent, invalid input); 130 interrupted (Ctrl-C:
the engine closes the upstream request and records the run cancelled).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import sys
from decimal import Decimal
from typing import Any, NoReturn

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from apps.agents.engine.context import AgentError, AgentResult
from apps.agents.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionCreated,
    ExecutionFailed,
    OutputDelta,
    OutputReset,
    PlatformFallback,
    ToolCallEvent,
    ToolResultEvent,
)
from apps.agents.engine.run_stream import RunStream
from apps.agents.engine.serialize import result_body
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent, Conversation
from apps.agents.selectors import agent_get_visible, agent_key_filter, parse_uuid

EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130


class Command(BaseCommand):
    help = "Run an agent on a task through the execution engine; print its output and what it cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's slug (agent_id) or id.")
        parser.add_argument("task", help='What the agent should do; "-" reads it from stdin.')
        parser.add_argument("--stream", action="store_true", help="Print the output as it is generated.")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print only the response body as JSON (success, output, execution_id, tokens, cost...).",
        )
        parser.add_argument(
            "--conversation", metavar="ID", help="Continue a stored conversation (runs as its owner)."
        )
        parser.add_argument("--user", metavar="USERNAME", help="Run as this user (default: no user).")

    def handle(self, *args: Any, **options: Any) -> None:
        self.as_json: bool = options["as_json"]
        # Django's OutputWrapper answers isatty() for the stream it wraps (a StringIO in call_command).
        self.rich = not self.as_json and self.stdout.isatty()
        root = logging.getLogger()
        level = root.level
        if options["verbosity"] < 2:
            # The engine's INFO lines (HTTP requests, status changes) would interleave with the streamed text
            # on a terminal; warnings and errors still show. `-v 2` shows everything.
            root.setLevel(max(level, logging.WARNING))
        try:
            self._handle(options)
        finally:
            root.setLevel(level)  # call_command() may run inside a longer-lived process

    def _handle(self, options: dict[str, Any]) -> None:
        try:
            user = _user(options["user"])
            conversation = _conversation(options["conversation"], user)
            if user is None and conversation is not None:
                user = conversation.owner
            agent = _agent(options["agent"], user)
            task = sys.stdin.read() if options["task"] == "-" else options["task"]
            context = {"conversation_id": str(conversation.pk)} if conversation is not None else None
            result = asyncio.run(self._run(agent, {"task": task}, user, context, stream=options["stream"]))
        except ApplicationError as exc:
            self._refused(exc)
        except KeyboardInterrupt:
            self.stderr.write("interrupted: the execution was cancelled")
            sys.exit(EXIT_INTERRUPTED)
        self._finish(result, streamed=options["stream"])

    # ------------------------------------------------------------------ running
    async def _run(
        self, agent: Agent, input_data: dict[str, Any], user: Any, context: Any, *, stream: bool
    ) -> AgentResult:
        # Imported here: loading the engine pulls in the platform registry, which --help does not need.
        from apps.agents.services import execution_engine
        from apps.platforms.registry import get_registry

        try:
            if stream:
                return await self._consume(
                    await execution_engine.open_stream(agent, input_data, user, context)
                )
            return await execution_engine.execute_agent(agent, input_data, user, context)
        finally:
            # The SDK clients' connections belong to this loop, which ends with the command; so do the database
            # connections of the thread the async ORM ran in (call_command may be used by a long process).
            await get_registry().aclose()
            await sync_to_async(connections.close_all)()

    async def _consume(self, stream: RunStream) -> AgentResult:
        """The terminal renderer of a run stream. Ctrl-C cancels this task: closing the stream then cancels
        the run, which closes the upstream request and records the run cancelled."""
        terminal: Any = None
        open_line = False  # streamed text whose last line has no newline yet
        try:
            while (item := await stream.read()) is not None:
                event = item.event  # type: ignore[union-attr]
                if isinstance(event, OutputDelta) and not self.as_json:
                    self.stdout.write(event.text, ending="")
                    self.stdout.flush()
                    open_line = not event.text.endswith("\n") if event.text else open_line
                elif isinstance(event, OutputReset) and not self.as_json:
                    if open_line:
                        self.stdout.write("")
                        open_line = False
                    self._note(f"that answer is discarded and re-asked: {event.reason}")
                elif isinstance(event, PlatformFallback) and not self.as_json:
                    self._note(
                        f"falling back from {event.from_platform} to {event.to_platform}: {event.reason}"
                    )
                elif isinstance(event, ToolCallEvent) and not self.as_json:
                    self._note(f"tool call {event.tool}({json.dumps(event.arguments, ensure_ascii=False)})")
                elif isinstance(event, ToolResultEvent) and not self.as_json:
                    self._note(f"tool {event.tool} {'failed' if event.is_error else 'answered'}")
                elif isinstance(event, ExecutionCompleted | ExecutionFailed | ExecutionCancelled):
                    terminal = event
                elif isinstance(event, ExecutionCreated):
                    pass  # the id is in the summary
        finally:
            await stream.aclose()
        if open_line:
            self.stdout.write("")  # end the streamed text's last line before the summary
        return _terminal_result(terminal)

    # ------------------------------------------------------------------ printing
    def _note(self, text: str) -> None:
        self.stderr.write(f"[{text}]", style_func=self.style.WARNING)

    def _refused(self, exc: ApplicationError) -> NoReturn:
        if self.as_json:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.fields:
                error["fields"] = {name: str(value) for name, value in exc.fields.items()}
            self.stdout.write(json.dumps({"error": error}, ensure_ascii=False))
        raise CommandError(f"{exc.code}: {exc.message}", returncode=EXIT_REFUSED)

    def _finish(self, result: AgentResult, *, streamed: bool) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(result_body(result), ensure_ascii=False, indent=2, default=str))
        else:
            if not streamed and result.output is not None:
                self.stdout.write(format_output(result.output))
            self.stdout.write(self._summary(result), ending="")
        if not result.success:
            error = result.error or AgentError("provider_error", "the run did not succeed")
            raise CommandError(f"{error.code}: {error.message}", returncode=EXIT_FAILED)

    def _summary(self, result: AgentResult) -> str:
        rows = summary_rows(result)
        if not self.rich:
            width = max(len(key) for key, _ in rows)
            return "".join(f"{key.ljust(width)}  {value}\n" for key, value in rows)
        return _rich_summary(result, rows)


# ---------------------------------------------------------------------- lookups
def _user(username: str | None) -> Any:
    if username is None:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ApplicationError(f"user {username!r} not found", code="not_found", status=404)
    return user


def _conversation(conversation_id: str | None, user: Any) -> Conversation | None:
    if conversation_id is None:
        return None
    pk = parse_uuid(conversation_id)
    conversations = Conversation.objects.select_related("owner")
    if user is not None:
        # Someone else's conversation is "not found", as in the API (the engine checks it again).
        conversations = conversations.filter(owner=user)
    conversation = conversations.filter(pk=pk).first() if pk is not None else None
    if conversation is None:
        raise ApplicationError(f"conversation {conversation_id!r} not found", code="not_found", status=404)
    return conversation


def _agent(key: str, user: Any) -> Agent:
    """As the API resolves `{id}`: slug or UUID; with --user, only agents that user may see."""
    if user is not None:
        agent = agent_get_visible(user=user, key=key)
    else:
        where = agent_key_filter(key)
        agent = Agent.objects.filter(where).first() if where is not None else None
    if agent is None:
        raise ApplicationError(f"agent {key!r} not found", code="not_found", status=404)
    return agent


def _terminal_result(terminal: Any) -> AgentResult:
    if terminal is not None and terminal.result is not None:
        return terminal.result
    if isinstance(terminal, ExecutionFailed):
        return AgentResult(success=False, error=terminal.error)
    return AgentResult(success=False, error=AgentError("cancelled_by_user", "the run ended without a result"))


# ---------------------------------------------------------------------- formatting
def format_output(output: Any) -> str:
    """Text as it is; structured output (a JSON-schema agent's object) as indented JSON."""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, indent=2, default=str)


def format_cost(cost: Decimal) -> str:
    # normalize() drops the column's trailing zeros (0.0000099000 -> 0.0000099); `f` avoids 9.9E-6.
    return f"${Decimal(cost).normalize():f}"


def summary_rows(result: AgentResult) -> list[tuple[str, str]]:
    status = "completed" if result.success else (result.error.code if result.error else "failed")
    platform = " / ".join(part for part in (result.platform_used, result.model_used) if part) or "-"
    rows = [
        ("status", status),
        (
            "tokens",
            f"{result.input_tokens} in, {result.output_tokens} out ({result.tokens_used} total)",
        ),
        ("cost", format_cost(result.cost)),
        ("time", f"{result.execution_time:.3f} s"),
        ("platform", platform),
        ("execution", result.execution_id or "-"),
    ]
    if result.error is not None:
        rows.insert(1, ("error", result.error.message))
    return rows


def _rich_summary(result: AgentResult, rows: list[tuple[str, str]]) -> str:
    from rich import box
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    colour = "green" if result.success else "red"
    buffer = io.StringIO()
    # Rendered to a string, then written through the command's stdout, so that call_command(stdout=...) works.
    console = Console(file=buffer, force_terminal=True, width=min(shutil.get_terminal_size().columns, 100))
    console.print(Panel(table, title=rows[0][1], title_align="left", border_style=colour, box=box.ROUNDED))
    return buffer.getvalue()
