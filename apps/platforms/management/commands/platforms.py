"""`manage.py platforms [--ping]`: which AI platforms this process would use, in which order, and whether
each answers. Shows default models and base URLs, never a key (and scrubs configured keys from any error
text, in case a provider echoes one back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.platforms.base import ChatMessage, CompletionRequest
from apps.platforms.errors import PlatformError
from apps.platforms.registry import (
    ENABLE_HINT,
    PLATFORM_NAMES,
    PlatformRegistry,
    get_registry,
    installed_registry,
    set_registry,
)

SECRET_SETTINGS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")


@dataclass(frozen=True, slots=True)
class PingResult:
    ok: bool
    latency_ms: float
    detail: str


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    default_model: str
    where: str
    is_default: bool
    ping: PingResult | None = None


class Command(BaseCommand):
    help = "List the configured AI platforms, their default models and fallback order; --ping checks each."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ping", action="store_true", help="send a one-token request to each platform")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds per ping (default 30)")

    def handle(self, *args: object, **options: object) -> None:
        # A registry this command builds is this command's to close: its SDK clients open connections on the
        # command's own event loop, which is gone afterwards. One installed by someone else stays theirs.
        owned = installed_registry() is None
        registry = get_registry()
        rows = [self._row(registry, name) for name in registry.names()]
        if options["ping"] and rows:
            names = [r.name for r in rows]
            results = asyncio.run(ping_all(registry, names, float(options["timeout"]), close=owned))
            rows = [Row(r.name, r.default_model, r.where, r.is_default, results[r.name]) for r in rows]
            if owned:
                set_registry(None)

        secrets = [value for value in (getattr(settings, s, "") for s in SECRET_SETTINGS) if value]
        if self.stdout.isatty():
            text = render_rich(rows, registry, pinged=bool(options["ping"]))
        else:
            text = render_plain(rows, registry, pinged=bool(options["ping"]))
        self.stdout.write(redact(text, secrets), ending="")

        failed = [r.name for r in rows if r.ping is not None and not r.ping.ok]
        if failed:
            raise CommandError(f"ping failed: {', '.join(failed)}")

    @staticmethod
    def _row(registry: PlatformRegistry, name: str) -> Row:
        info = registry.get(name).info()
        if info.base_url:
            where = info.base_url
        elif name == "local":
            where = str(info.extra.get("model_path") or "(no model file)")
        else:
            where = "(provider default)"
        return Row(name, info.default_model, where, name == registry.default_platform())


async def ping_all(
    registry: PlatformRegistry, names: Iterable[str], seconds: float, *, close: bool = False
) -> dict[str, PingResult]:
    names = list(names)
    try:
        results = await asyncio.gather(*(ping(registry, name, seconds) for name in names))
    finally:
        if close:
            await registry.aclose()
    return dict(zip(names, results, strict=True))


async def ping(registry: PlatformRegistry, name: str, seconds: float) -> PingResult:
    platform = registry.get(name)
    request = CompletionRequest(
        model=platform.default_model,
        messages=[ChatMessage(role="user", content="Reply with: ok")],
        max_tokens=1,
        temperature=0.0,
        timeout=seconds,
    )
    started = time.perf_counter()
    try:
        # The outer bound also covers waiting for a busy local model and anything an SDK fails to time out.
        completion = await asyncio.wait_for(platform.generate(request), seconds + 5)
    except PlatformError as exc:
        return PingResult(False, _ms(started), str(exc))
    except TimeoutError:
        return PingResult(False, _ms(started), f"{name} timeout: no answer within {seconds:g}s")
    return PingResult(True, _ms(started), f"model {completion.model}")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _footer(registry: PlatformRegistry) -> list[str]:
    missing = [name for name in PLATFORM_NAMES if name not in registry]
    lines = [
        f"Fallback order: {' -> '.join(registry.names()) or '(none)'}",
        f"Default platform: {registry.default_platform() or '(none)'}",
    ]
    lines += [f"Not configured: {name} ({ENABLE_HINT[name]})" for name in missing]
    return lines


def render_plain(rows: list[Row], registry: PlatformRegistry, *, pinged: bool) -> str:
    if not rows:
        return "\n".join(["No AI platform is configured.", *_footer(registry)]) + "\n"
    lines = []
    for row in rows:
        name = f"{row.name} (default)" if row.is_default else row.name
        line = f"{name}  model={row.default_model}  url={row.where}"
        if pinged and row.ping is not None:
            status = "ok" if row.ping.ok else "error"
            line += f"  ping={status} {row.ping.latency_ms:.0f}ms  {row.ping.detail}"
        lines.append(line)
    return "\n".join(lines + _footer(registry)) + "\n"


def render_rich(rows: list[Row], registry: PlatformRegistry, *, pinged: bool) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="AI platforms (in fallback order)")
    for column in ("platform", "default model", "base URL / model file"):
        table.add_column(column)
    if pinged:
        table.add_column("ping")
        table.add_column("latency", justify="right")
        table.add_column("detail")
    for row in rows:
        cells = [f"{row.name}{' *' if row.is_default else ''}", row.default_model, row.where]
        if pinged and row.ping is not None:
            status = "[green]ok[/green]" if row.ping.ok else "[red]error[/red]"
            cells += [status, f"{row.ping.latency_ms:.0f} ms", row.ping.detail]
        table.add_row(*cells)
    console = Console(force_terminal=True)
    with console.capture() as captured:
        if rows:
            console.print(table)
            console.print("* default platform")
        else:
            console.print("[yellow]No AI platform is configured.[/yellow]")
        for line in _footer(registry):
            console.print(line, markup=False)
    return captured.get()
