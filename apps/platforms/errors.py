"""One error type for every platform failure. The retry loop reads `retryable`; it never guesses from text."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from apps.platforms.base import Usage

ErrorKind = Literal[
    "rate_limited",  # 429
    "server_error",  # 5xx
    "timeout",  # no answer in time
    "connection",  # refused, reset, DNS
    "bad_request",  # 400/422: the request itself is wrong; never retried nor sent elsewhere
    "auth",  # 401/403
    "not_found",  # 404, e.g. unknown model
    "refusal",  # content policy / safety block
    "incomplete_stream",  # the stream closed before its finish reason
    "malformed_response",  # the provider answered something we cannot parse
    "unavailable",  # platform not configured or cooling down
]


class PlatformError(Exception):
    def __init__(
        self,
        message: str,
        *,
        provider: str,
        kind: ErrorKind,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.kind = kind
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        #: What the request used before it failed (a timeout, a stream cut short), as the provider or the local
        #: model counted it; None when nothing was reported. Never estimated.
        self.usage = usage

    @property
    def may_fall_back(self) -> bool:
        """A wrong request is wrong everywhere; everything else may be tried on another platform."""
        return self.kind != "bad_request"

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.provider}{status} {self.kind}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"PlatformError(provider={self.provider!r}, kind={self.kind!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, retry_after={self.retry_after!r}, message={self.message!r})"
        )


def retryable_for_status(status: int) -> bool:
    return status == 408 or status == 409 or status == 429 or status >= 500


def kind_for_status(status: int) -> ErrorKind:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    return "bad_request"


def parse_retry_after(headers: object) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent or invalid."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    raw_ms = get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# ------------------------------------------------------------------------------ what a user may be shown
#: Absolute file paths (POSIX or Windows, two segments or more) and file: URIs. Not a URL's path: the
#: character before the first slash may not be part of a URL ("https://host/v1" does not match).
_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[\\/](?:[\w.~+@-]+[\\/])+[\w.~+@-]*|file:[^\s'\"]+")
#: Text that is a raw Python exception ("ValueError: ...", "llama_cpp.LlamaError ...") or a traceback.
_RAW_EXCEPTION = re.compile(
    r"^\s*(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b|Traceback \("
)

#: What a user is told instead of a message that would show internals; the message itself goes to the log.
STABLE_MESSAGES: dict[str, str] = {
    "rate_limited": "the platform is rate limiting requests",
    "server_error": "the platform failed with an internal error",
    "timeout": "the platform did not answer in time",
    "connection": "could not connect to the platform",
    "bad_request": "the platform could not serve this request",
    "auth": "the platform refused the server's credentials",
    "not_found": "the platform does not know this model",
    "refusal": "the model refused to answer",
    "incomplete_stream": "the platform's answer ended early",
    "malformed_response": "the platform answered something that could not be read",
    "unavailable": "the platform is not available",
}


def shows_internals(text: str) -> bool:
    """Whether `text` carries a file path, a file: URI, a raw exception's text or a traceback."""
    return bool(_PATH.search(text) or _RAW_EXCEPTION.search(text))


def public_message(error: PlatformError) -> str:
    """The message a user may see for `error`: its own when it is a provider's or ours, otherwise a stable
    one for its kind. Model file paths and raw exception text (the local adapter writes both) stay in the
    log, where the engine records the original with the execution id."""
    if not shows_internals(error.message):
        return error.message
    return STABLE_MESSAGES.get(error.kind, "the platform failed") + " (details are in the server log)"
