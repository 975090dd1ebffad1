"""Helpers shared by the adapters whose SDK talks HTTP (openai, anthropic): building PlatformErrors that are
safe to show and log, and decoding tool-call arguments.

Every message that leaves an adapter goes through `scrub`: providers (and some SDK versions) echo the API key
in authentication errors, and an error message ends up in logs, in the execution row and in API responses.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import anyio
import httpx2

from apps.platforms.errors import PlatformError, kind_for_status, parse_retry_after, retryable_for_status

ClientT = TypeVar("ClientT")

REDACTED = "[redacted]"
# Longest provider message we keep: enough to diagnose, short enough for a log line and a DB column.
MAX_MESSAGE = 500


def scrub(text: str, secret: str | None) -> str:
    """`text` without `secret` (the API key) and trimmed to a sensible length."""
    if secret:
        text = text.replace(secret, REDACTED)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def describe(exc: BaseException, secret: str | None) -> str:
    """`Type: message` of an exception, and of its cause when that says more (e.g. the socket error)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return scrub(text, secret)


def status_error(
    provider: str,
    *,
    status: int,
    message: str,
    headers: object,
    secret: str | None,
) -> PlatformError:
    """The PlatformError for an HTTP error status: kind and retryability from the status alone."""
    return PlatformError(
        scrub(message, secret),
        provider=provider,
        kind=kind_for_status(status),
        retryable=retryable_for_status(status),
        status=status,
        retry_after=parse_retry_after(headers),
    )


def transport_error(provider: str, exc: BaseException, secret: str | None) -> PlatformError | None:
    """A timeout or connection failure raised by the HTTP layer itself, or None if `exc` is not one.

    The SDKs wrap these while sending a request but not always while reading a stream body, so the adapters
    meet the raw httpx2 exceptions mid-stream.
    """
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return PlatformError(describe(exc, secret), provider=provider, kind="timeout", retryable=True)
    if isinstance(exc, httpx2.RequestError | anyio.EndOfStream | anyio.BrokenResourceError | OSError):
        return PlatformError(describe(exc, secret), provider=provider, kind="connection", retryable=True)
    return None


def malformed(provider: str, detail: str, secret: str | None = None) -> PlatformError:
    """The provider answered something we cannot read. Retryable: a garbled answer is usually transient."""
    return PlatformError(
        scrub(f"unreadable response: {detail}", secret),
        provider=provider,
        kind="malformed_response",
        retryable=True,
    )


def incomplete_stream(provider: str, detail: str) -> PlatformError:
    return PlatformError(
        f"the stream ended before its finish reason ({detail})",
        provider=provider,
        kind="incomplete_stream",
        retryable=True,
    )


def parse_arguments(provider: str, raw: str | None, *, tool: str) -> Mapping[str, Any]:
    """Tool-call arguments as a JSON object; an empty string means no arguments."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise malformed(provider, f"arguments of tool call {tool!r} are not JSON") from None
    if not isinstance(value, dict):
        raise malformed(provider, f"arguments of tool call {tool!r} are not a JSON object")
    return value


class PerLoopClient(Generic[ClientT]):
    """One SDK client per event loop, reused for every request on that loop.

    An async HTTP client's pooled connections belong to the loop that opened them: reused from another loop
    they fail ("Event loop is closed"). The ASGI server runs one loop for the life of the process, but a
    Celery task or a sync caller runs each call in a fresh loop (asyncio.run, async_to_sync), so a single
    client shared by all of them breaks from the second loop on. A closed loop's client is dropped (its
    sockets died with the loop; they cannot be closed from another one).
    """

    def __init__(self, factory: Callable[[], ClientT], close: Callable[[ClientT], Awaitable[None]]) -> None:
        self._factory = factory
        self._close = close
        # Built now so that a bad configuration fails at startup, not on the first request; it goes to the
        # first loop that asks (usually the only one).
        self._spare: ClientT | None = factory()
        # Not weakly keyed: a client's pooled connections refer to their loop, so a weak key would never die.
        # Clients of closed loops are dropped on the next get() instead.
        self._clients: dict[asyncio.AbstractEventLoop, ClientT] = {}
        self._lock = threading.Lock()  # loops in different threads may ask at the same time

    def get(self) -> ClientT:
        loop = asyncio.get_running_loop()
        with self._lock:
            for closed in [other for other in self._clients if other.is_closed()]:
                del self._clients[closed]
            client = self._clients.get(loop)
            if client is None:
                client, self._spare = (self._spare or self._factory()), None
                self._clients[loop] = client
            return client

    async def aclose(self) -> None:
        """Close the current loop's client (a loop that is about to end should call this); clients of other
        loops cannot be closed from here and stay with their loops."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await self._close(client)
