"""OpenAI Chat Completions through the official `openai` SDK; also any OpenAI-compatible server (Ollama, vLLM,
LM Studio) reached through `base_url`.

The calls are SdkPlatform's (sdk_platform.py) and the request and answer mapping is in openai_wire.py; this
module holds the client's options and the mapping of OpenAI's own API errors.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

from apps.platforms import _http
from apps.platforms.base import SAMPLING_OPTIONS, Completion, CompletionRequest
from apps.platforms.errors import PlatformError
from apps.platforms.openai_wire import PROVIDER, StreamState, completion_of, request_params
from apps.platforms.sdk_platform import SdkPlatform
from apps.platforms.sse import JsonEventStream

CHAT_PATH = "/chat/completions"
# Local OpenAI-compatible servers need no key, but the SDK refuses to build a client without one.
NO_KEY = "no-key-required"
# Error codes with which OpenAI (and Azure OpenAI) refuse a request on content-policy grounds.
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
# Error types/codes of an error event inside a stream (no HTTP status to go by).
RATE_LIMIT_LABELS = frozenset({"rate_limit_error", "rate_limit_exceeded", "tokens", "requests"})
BAD_REQUEST_LABELS = frozenset({"invalid_request_error", "context_length_exceeded"})


class OpenAIPlatform(SdkPlatform):
    name = "openai"
    sdk = openai
    # Every sampling option of the request is OpenAI's own.
    supported_options = frozenset({*SAMPLING_OPTIONS, "images", "tool_choice"})

    def __init__(
        self, *, api_key: str, base_url: str | None = None, default_model: str, timeout: float = 60.0
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, default_model=default_model, timeout=timeout)
        # OpenAI itself wants `max_completion_tokens` (its reasoning models reject `max_tokens`), while the
        # OpenAI-compatible servers we target (Ollama, LM Studio, older vLLM) only know `max_tokens`. The
        # choice follows the configured endpoint, never the model name.
        self._max_tokens_field = "max_tokens" if self.base_url else "max_completion_tokens"

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._secret or (NO_KEY if self.base_url else ""),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=self._http_client(),
        )

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        return request_params(
            request, default_model=self.default_model, max_tokens_field=self._max_tokens_field
        )

    async def _create(self, client: openai.AsyncOpenAI, params: dict[str, Any], *, stream: bool) -> Any:
        # Sent with the client's own post() (the SDK's documented way to call an endpoint as it is), not
        # chat.completions.create(): create() first walks every parameter against the SDK's TypedDicts
        # (typing introspection per value), the largest single cost of a streamed run in bench/engine.py's
        # profile, for a body that request_params already builds as the JSON the API takes. The request
        # is otherwise the same: same client, headers, auth, timeout and errors.
        body = dict(params)
        options: dict[str, Any] = {"security": {"bearer_auth": True}}
        if "timeout" in body:  # a client option, not a field of the body
            options["timeout"] = body.pop("timeout")
        if not stream:
            # The raw response, its JSON parsed here into plain dicts as a stream's events are (sse.py): the
            # SDK's ChatCompletion model costs ten times the JSON parse (97 against 8 us per answer) for
            # fields read once. A body that is not JSON is malformed_response (_http.sdk_error).
            response = await client.post(CHAT_PATH, cast_to=httpx2.Response, body=body, options=options)
            return json.loads(response.content)
        # OpenAI reports a stream's usage only when asked, in a last chunk of its own. The raw response, its
        # body unread: its events are parsed here into plain dicts, not into the SDK's pydantic chunks
        # (sse.py says why).
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        response = await client.post(
            CHAT_PATH, cast_to=httpx2.Response, body=body, options=options, stream=True, stream_cls=None
        )
        return JsonEventStream(response, sdk=openai)

    def _completion(self, response: object, request: CompletionRequest, model: str) -> Completion:
        return completion_of(response, model, self._secret)

    def _stream_state(self, request: CompletionRequest, model: str) -> StreamState:
        return StreamState(model=model)

    def _api_error(self, exc: openai.APIError) -> PlatformError:
        secret = self._secret
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (400, 403) and exc.code in CONTENT_POLICY_CODES:
                return PlatformError(
                    _http.scrub(exc.message, secret),
                    provider=PROVIDER,
                    kind="refusal",
                    retryable=False,
                    status=exc.status_code,
                )
            return _http.status_error(
                PROVIDER,
                status=exc.status_code,
                message=exc.message,
                headers=exc.response.headers,
                secret=secret,
            )
        # An error object inside a 200 stream: no status, so go by the error type the provider named.
        labels = {exc.type, exc.code}
        message = _http.scrub(exc.message, secret)
        if labels & RATE_LIMIT_LABELS:
            return PlatformError(message, provider=PROVIDER, kind="rate_limited", retryable=True)
        if labels & BAD_REQUEST_LABELS:
            return PlatformError(message, provider=PROVIDER, kind="bad_request", retryable=False)
        return PlatformError(message, provider=PROVIDER, kind="server_error", retryable=True)
