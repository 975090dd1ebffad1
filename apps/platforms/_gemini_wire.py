"""Gemini wire details for gemini.py: finish reasons, usage, tool-call ids and outputs, Retry-After from
RetryInfo, blocked prompts."""

from __future__ import annotations

import json
import re
from typing import Any

from google.genai import types

from apps.platforms._http import malformed
from apps.platforms.base import (
    FinishReason,
    Usage,
)
from apps.platforms.errors import PlatformError

PROVIDER = "gemini"
API_VERSION = "v1beta"
# Gemini often omits function-call ids; ours carry this prefix so they are never sent back as if Gemini's.
GENERATED_ID_PREFIX = "gemini-call-"
# Gemini 3 rejects a replayed function call without its thought signature. When we no longer hold the real one
# (another process, a history from another platform), this documented sentinel skips the validation.
SKIP_SIGNATURE = b"skip_thought_signature_validator"
MAX_SIGNATURES = 4096

FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    # A long-decode checkpoint: with automatic continuation off, the answer is cut short like MAX_TOKENS.
    "CONTINUATION": "length",
}
# Content-policy stops: a refusal, never retried.
REFUSAL = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# Our request was wrong (a replayed function call lacks its signature): retrying it unchanged cannot help.
BAD_REQUEST = frozenset({"MISSING_THOUGHT_SIGNATURE"})
# Everything else (MALFORMED_FUNCTION_CALL, MALFORMED_RESPONSE, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS,
# OTHER, unknown future values) is an unusable answer another sample may not repeat: malformed, retryable.


def _finish(reason: Any, *, has_text: bool, has_calls: bool) -> FinishReason:
    value = str(getattr(reason, "value", reason) or "FINISH_REASON_UNSPECIFIED")
    if value in FINISH:
        return "tool_calls" if has_calls and value == "STOP" else FINISH[value]
    if value in REFUSAL:
        # Text already produced (and, in a stream, already shown) is kept: the answer ends as content_filter,
        # like OpenAI's finish reason. With nothing produced the model refused: an error, never retried.
        if has_text:
            return "content_filter"
        raise PlatformError(
            f"the model stopped for {value}", provider=PROVIDER, kind="refusal", retryable=False
        )
    if value in BAD_REQUEST:
        raise PlatformError(
            f"Gemini rejected the request ({value})", provider=PROVIDER, kind="bad_request", retryable=False
        )
    raise malformed(PROVIDER, f"the model stopped with {value}")


def _raise_if_prompt_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = str(getattr(feedback.block_reason, "value", feedback.block_reason))
        raise PlatformError(
            f"the prompt was blocked ({reason})", provider=PROVIDER, kind="refusal", retryable=False
        )


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage:
    if meta is None:
        return Usage()
    # Thinking tokens are billed as output; tool-use prompt tokens (e.g. search results) as input.
    return Usage(
        input_tokens=(meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0),
        output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
    )


def _wire_id(call_id: str | None) -> str | None:
    """The id to send back to Gemini: its own ids, never the ones we generated for it."""
    if not call_id or call_id.startswith(GENERATED_ID_PREFIX):
        return None
    return call_id


def _tool_output(content: str) -> dict[str, Any]:
    """A FunctionResponse.response object: a JSON object result as is, anything else under "output"."""
    try:
        value = json.loads(content)
    except ValueError:
        return {"output": content}
    return value if isinstance(value, dict) else {"output": value}


def _retry_info_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail ({"retryDelay": "7s"}), which quota errors carry."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for detail in (error or {}).get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
