"""Anthropic Messages API through the official `anthropic` SDK (SDK-internal retries off: max_retries=0).

Structured output (request.json_schema) is a forced tool: the schema becomes the input schema of one tool,
`OUTPUT_TOOL`, that the model must call, and the call's input is returned as the completion text. That works
on every Claude model with tool use (including the configured default, claude-3-5-haiku), whereas the native
`output_config.format` is only accepted by newer models; a prefilled "{" would give no schema at all.
With other tools present the model must call some tool (tool_choice "any"): a real tool for another round of
the tool loop, or OUTPUT_TOOL for the final answer.

Temperature is not sent: SDK 2.x no longer has the parameter (the API sets sampling for current models).

The calls are SdkPlatform's (sdk_platform.py) and the request and answer mapping is in anthropic_wire.py;
this module holds the client's options and the mapping of Anthropic's own API errors.
"""

from __future__ import annotations

from typing import Any

import anthropic

from apps.platforms import _http
from apps.platforms.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    OUTPUT_TOOL,
    PROVIDER,
    StreamState,
    completion_of,
    is_wrapped,
    request_params,
)
from apps.platforms.base import Completion, CompletionRequest
from apps.platforms.errors import ErrorKind, PlatformError
from apps.platforms.sdk_platform import SdkPlatform

# Error types of an `event: error` inside a 200 stream, which has no HTTP status to go by.
STREAM_ERROR_KINDS: dict[str, tuple[ErrorKind, bool]] = {
    "overloaded_error": ("server_error", True),
    "api_error": ("server_error", True),
    "rate_limit_error": ("rate_limited", True),
    "invalid_request_error": ("bad_request", False),
    "authentication_error": ("auth", False),
    "permission_error": ("auth", False),
    "not_found_error": ("not_found", False),
}


class AnthropicPlatform(SdkPlatform):
    name = "anthropic"
    sdk = anthropic
    # SDK 2.x has no top_p (nor temperature), and the API has no seed or penalties.
    supported_options = frozenset({"stop", "user", "images", "tool_choice"})
    ignored_fields = frozenset({"temperature"})

    def _new_client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._secret,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=self._http_client(),
        )

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        return request_params(request, default_model=self.default_model)

    async def _create(self, client: anthropic.AsyncAnthropic, params: dict[str, Any], *, stream: bool) -> Any:
        if stream:
            return await client.messages.create(**params, stream=True)
        return await client.messages.create(**params)

    def _completion(self, response: object, request: CompletionRequest, model: str) -> Completion:
        return completion_of(response, model, wrapped=is_wrapped(request), secret=self._secret)

    def _stream_state(self, request: CompletionRequest, model: str) -> StreamState:
        return StreamState(model=model, output_tool=OUTPUT_TOOL, wrapped=is_wrapped(request))

    def _api_error(self, exc: anthropic.APIError) -> PlatformError | None:
        if not isinstance(exc, anthropic.APIStatusError):
            return None
        message = exc.api_message or exc.message
        if exc.status_code >= 400:
            return _http.status_error(
                PROVIDER,
                status=exc.status_code,
                message=message,
                headers=exc.response.headers,
                secret=self._secret,
            )
        # An `event: error` in the middle of a 200 stream (e.g. overloaded): go by the error type.
        kind, retryable = STREAM_ERROR_KINDS.get(exc.type or "", ("server_error", True))
        return PlatformError(
            _http.scrub(f"{exc.type}: {message}", self._secret),
            provider=PROVIDER,
            kind=kind,
            retryable=retryable,
        )


__all__ = ["DEFAULT_MAX_TOKENS", "OUTPUT_TOOL", "AnthropicPlatform"]
