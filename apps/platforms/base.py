"""The one interface every platform implements, and the typed values that cross it.

A platform is two methods (`generate`, `stream`); each adapter maps its provider's wire types onto these
dataclasses exhaustively so that the engine never sees an SDK type.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

# The fields of Sampling, by the names `Platform.supported_options` uses (OpenAI's).
SAMPLING_OPTIONS = (
    "stop",
    "seed",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "logprobs",
    "top_logprobs",
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call requested by the model. `arguments` is the parsed JSON object."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image the client sent inline (a `data:` URL, decoded by the facade): never a URL to fetch."""

    media_type: str  # image/png, image/jpeg, image/gif, image/webp
    data: str  # base64, as received


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str = ""
    # Images of a user message, after its text (platforms with "images" in `supported_options` take them).
    images: tuple[ImagePart, ...] = ()
    # Set on assistant messages that asked for tools.
    tool_calls: tuple[ToolCall, ...] = ()
    # Set on role="tool" messages: which call this is the result of, and the tool's name.
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    description: str
    parameters: Mapping[str, Any]  # JSON Schema of the arguments object


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """How the model may use the offered tools: "auto", "none", "required" (some tool), or one tool by name."""

    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    """Per-request generation options beyond temperature / max_tokens (OpenAI's names). Each adapter maps the
    ones it supports and lists them in `Platform.supported_options`; `CompletionRequest.unsupported()` names
    the others, so that a caller refuses them instead of a platform silently dropping them."""

    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    #: Return the chosen tokens' log probabilities (Completion.logprobs), with this many alternatives each.
    logprobs: bool = False
    top_logprobs: int | None = None

    def used(self) -> tuple[str, ...]:
        """The options this request sets, by name."""
        return tuple(name for name in SAMPLING_OPTIONS if getattr(self, name) not in (None, (), False))


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    messages: Sequence[ChatMessage]
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    # When set, the platform is asked for JSON matching this schema (native structured output or a grammar).
    json_schema: Mapping[str, Any] | None = None
    # The client asked for strict structured output (OpenAI's `strict: true`); others validate afterwards.
    json_schema_strict: bool = False
    tools: Sequence[ToolDefinition] = ()
    # Seconds for the whole request (connect + response); None means the platform default.
    timeout: float | None = None
    # Called with the usage so far whenever the platform learns more of it (counts the provider reported, or
    # the local model's own), so that a request cut short by a timeout or a cancel still accounts for what it
    # used. Never called with an estimate.
    on_usage: Callable[[Usage], None] | None = field(default=None, compare=False, repr=False)
    sampling: Sampling = field(default_factory=Sampling)
    # None: the platform's default ("auto" when tools are offered).
    tool_choice: ToolChoice | None = None

    def options_used(self) -> tuple[str, ...]:
        """The optional features this request needs, named as in `Platform.supported_options`."""
        used = list(self.sampling.used())
        if any(message.images for message in self.messages):
            used.append("images")
        if self.tool_choice is not None and self.tool_choice.mode != "auto":
            used.append("tool_choice")
        return tuple(used)

    def with_system_message(self, convert: Callable[[ChatMessage], dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages for an API that takes the system prompt as a leading "system" role message (OpenAI,
        llama.cpp's chat format): that message, then each of ours as `convert` writes it."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *map(convert, self.messages)]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


# Normalised finish reasons. Adapters map provider values onto these.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str  # the model the provider reports having used
    tool_calls: tuple[ToolCall, ...] = ()
    provider_id: str | None = None
    #: With Sampling.logprobs: OpenAI's per-token records ({"token", "logprob", "bytes", "top_logprobs"}).
    logprobs: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a stream. Text chunks carry only `text`; the last chunk of every complete stream carries
    `finish_reason` and `usage` (and any tool calls, assembled whole). A stream that ends without such a chunk
    raises PlatformError instead: adapters never invent a finish reason."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    provider_id: str | None = None


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    name: str
    default_model: str
    base_url: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Platform(abc.ABC):
    """A configured AI platform. One instance per process, holding one reusable SDK client."""

    #: Registry name: "openai", "anthropic", "gemini" or "local".
    name: str
    default_model: str
    #: The optional request features this adapter maps (see CompletionRequest.options_used); a request using
    #: any other is refused before it is sent, never sent without it.
    supported_options: frozenset[str] = frozenset()
    #: Core request fields this adapter cannot send (e.g. "temperature"): an agent's own setting is then
    #: ignored, but a client asking for one per request is refused.
    ignored_fields: frozenset[str] = frozenset()

    def unsupported(self, request: CompletionRequest) -> tuple[str, ...]:
        return tuple(name for name in request.options_used() if name not in self.supported_options)

    @abc.abstractmethod
    async def generate(self, request: CompletionRequest) -> Completion:
        """Return the whole completion or raise PlatformError."""

    @abc.abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """Yield chunks as they arrive, ending with a chunk that has finish_reason and usage; raise
        PlatformError on any failure, including a stream that closes before its finish reason.
        Closing the iterator (or cancelling the task consuming it) closes the upstream request."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release the client's connections."""

    def info(self) -> PlatformInfo:
        return PlatformInfo(name=self.name, default_model=self.default_model)
