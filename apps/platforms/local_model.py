"""One loaded GGUF model and the single thread that runs its generations (the local platform's engine room).

See local.py for the design; this module holds the worker-thread side: the job a request hands over, the
generation loop (prompt evaluation, sampling with an optional grammar, stop strings, streaming pieces), the
speed calibration and the fail-fast check.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from apps.platforms.base import Usage
from apps.platforms.errors import PlatformError
from apps.platforms.local_deadline import REFUSAL_PREFIX, SAFETY, Speed, affordable, refuse

if TYPE_CHECKING:
    from llama_cpp import Llama

    from apps.platforms.local_grammar import JsonGrammar

logger = logging.getLogger("apps.platforms.local")

PROVIDER = "local"
# llama-cpp-python's own defaults for chat completions; kept identical so our output matches theirs.
DEFAULT_TEMPERATURE = 0.2
#: At most one text chunk per this many seconds (the first one at once).
EMIT_EVERY = 0.03
#: Seconds before the deadline at which free text stops, so that the answer arrives in time.
END_MARGIN = 0.5
#: The fewest output tokens a free-text answer is worth starting for (else the request is refused).
MIN_TEXT_TOKENS = 32
#: Seconds grammar building may take before the request is refused (it runs in a worker thread).
GRAMMAR_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """How the last generation on a shared model ended (for tests, benchmarks and the admin command)."""

    outcome: Literal["stop", "length", "cancelled", "error", "refused"]
    prompt_tokens: int
    completion_tokens: int
    #: Sampled tokens the grammar rejected (each one cost a full-vocabulary pass).
    grammar_rejections: int = 0
    #: Whether a JSON answer had to be steered to its end (its budget or its time ran out).
    closed_early: bool = False


@dataclass
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    #: The schema's grammars, loosest caps first (local_grammar.build_steps); None for free text.
    grammars: tuple[JsonGrammar, ...] | None
    emit: Callable[[tuple[Any, ...]], None]
    seed: int = 0
    #: time.monotonic() by which the answer is due (None: no deadline); checked before any decoding.
    deadline: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: The deadline was halved to leave time for a re-ask (a schema the grammar cannot fully enforce).
    halved: bool = False
    #: Send text as it is written (a stream); otherwise all of it at the end (generate).
    live: bool = True
    # The model's own counts so far, written by the worker thread, read by the waiting side on a timeout.
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _SharedModel:
    """One loaded GGUF model with the single thread allowed to touch it."""

    def __init__(self, path: str, n_ctx: int, n_threads: int) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.last_run: GenerationRecord | None = None
        self.speed: Speed | None = None
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
                from apps.platforms.local_sampling import calibrate, chat_formatter

                self._format = chat_formatter(llama)
                self.speed = Speed(*calibrate(llama))
                self._llama = llama
                logger.info(
                    "local model loaded",
                    extra={
                        "model_path": self.path,
                        "n_ctx": self.n_ctx,
                        "prompt_tps": round(self.speed.prompt_tps),
                        "decode_tps": round(self.speed.decode_tps, 1),
                    },
                )
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
            refused = exc.kind == "unavailable" and exc.message.startswith(REFUSAL_PREFIX)
            self.last_run = GenerationRecord(
                "refused" if refused else "error", job.prompt_tokens, job.completion_tokens
            )
            exc.usage = Usage(job.prompt_tokens, job.completion_tokens)
            job.emit(("error", exc))
        except Exception as exc:
            self.last_run = GenerationRecord("error", job.prompt_tokens, job.completion_tokens)
            error = _map_llama_error(exc)
            error.usage = Usage(job.prompt_tokens, job.completion_tokens)
            job.emit(("error", error))

    def _generate(self, job: _Job) -> GenerationRecord:
        llama = self.ensure_loaded()
        assert self._format is not None and self.speed is not None
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
        # Never past the end of the context window (llama-cpp-python's cap too), and never past what the
        # deadline affords at the calibrated speeds: structured output gets the loosest grammar caps whose
        # budget fits, free text is cut ("length") before the deadline. What cannot fit is refused now.
        room = self.n_ctx - len(prompt)
        limit = job.max_tokens if job.max_tokens and job.max_tokens > 0 else None
        if job.grammars and not job.grammars[0].exact and job.deadline is not None:
            # The grammar cannot enforce the whole schema, so the answer may fail validation and be re-asked:
            # this answer gets half the time left, the re-ask the other half.
            job.deadline = time.monotonic() + (job.deadline - time.monotonic()) / 2
            job.halved = True
        affordable = self._affordable(job, llama, prompt)
        grammar = None
        if job.grammars:
            from apps.platforms.local_grammar import DEFAULT_BUDGET, pick

            target = min(limit or DEFAULT_BUDGET, room if affordable is None else affordable)
            # Even the tightest caps over the target: that grammar, steered to its end in time (_decode);
            # refused only when not even the smallest valid answer fits the deadline.
            grammar = pick(job.grammars, target) or job.grammars[-1]
            if affordable is not None and grammar.floor > affordable:
                self._refuse(job, llama, prompt, grammar.floor)
            # Structured output is never cut by a token count (cut JSON is invalid, so it would only be
            # re-asked): the answer is steered to its end from `close_at` on (see _decode). This hard stop
            # is the context window or the caller's own max_tokens.
            max_tokens = min(room, limit) if limit else room
        else:
            max_tokens = min(room, limit) if limit else room
            if affordable is not None:
                if affordable < MIN_TEXT_TOKENS:
                    self._refuse(job, llama, prompt, MIN_TEXT_TOKENS)
                max_tokens = min(max_tokens, affordable)
        return self._decode(job, llama, prompt, max_tokens, rendered.stop, grammar)

    def _affordable(self, job: _Job, llama: Llama, prompt: list[int]) -> int | None:
        assert self.speed is not None
        return affordable(self.speed, job.deadline, llama, prompt)

    def _refuse(self, job: _Job, llama: Llama, prompt: list[int], output_tokens: int) -> NoReturn:
        assert self.speed is not None and job.deadline is not None
        refuse(self.path, self.speed, job.deadline, job.halved, llama, prompt, output_tokens)

    def _decode(
        self,
        job: _Job,
        llama: Llama,
        prompt: list[int],
        max_tokens: int,
        stops: Sequence[str] | None,
        grammar: JsonGrammar | None,
    ) -> GenerationRecord:
        import llama_cpp

        from apps.platforms.local_sampling import (
            JsonScan,
            Sampler,
            evaluate_prompt,
            first_stop,
            stop_prefix_len,
        )

        stops = [s for s in (stops or []) if s]
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text = ""
        emitted = 0
        last_emit = 0.0
        outcome: Literal["stop", "length", "cancelled"] = "length"
        n = 0
        deadline = job.deadline

        def prompt_progress(done: int) -> bool:
            job.prompt_tokens = done  # what the model has processed: reported if a timeout cuts it here
            return not job.cancel.is_set() and (deadline is None or time.monotonic() < deadline)

        started = time.perf_counter()
        evaluated = evaluate_prompt(llama, prompt, prompt_progress)
        if evaluated < 0:
            return GenerationRecord("cancelled", job.prompt_tokens, 0)
        job.prompt_tokens = len(prompt)
        prompt_done = time.perf_counter()
        self._learn_speed(evaluated, prompt_done - started, 0, 0.0)
        if deadline is not None:
            # The prompt took what it took: what is left now decides the output's size (or refusal).
            max_tokens, grammar = self._fit_after_prompt(job, llama, prompt, max_tokens, grammar)
        sampler = Sampler(
            llama,
            temperature=job.temperature,
            seed=job.seed,
            grammar=grammar.text if grammar is not None else None,
        )
        # JSON is steered to its end (closing) once its token budget is spent, or when the time left is
        # what closing needs, so a grammar-bound answer is complete and valid rather than cut.
        scan = JsonScan() if grammar is not None else None
        closing = False
        close_at = max_tokens
        close_by = deadline
        if grammar is not None:
            close_at = min(grammar.budget, max_tokens - grammar.floor)
            if deadline is not None:
                close_by = deadline - END_MARGIN - grammar.floor / (self.speed.decode_tps * SAFETY)
        try:
            while n < max_tokens:
                # Checked once per token: a cancelled request stops within one decode step (milliseconds).
                if job.cancel.is_set():
                    outcome = "cancelled"
                    break
                # Free text ends ("length") just before the deadline rather than being cut by it: the
                # answer so far is an answer. JSON cut short is not: it starts closing in time instead.
                if grammar is None and deadline is not None and time.monotonic() > deadline - END_MARGIN:
                    break
                if scan is not None and not closing:
                    closing = n >= close_at or (close_by is not None and time.monotonic() > close_by)
                token = sampler.sample(scan if closing else None)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    outcome = "stop"
                    break
                n += 1
                job.completion_tokens = n
                # No prev_tokens: llama.cpp's own tokenizer ignores them (only the HF tokenizer uses them).
                piece = decoder.decode(llama.detokenize([token]))
                text += piece
                if scan is not None:
                    scan.feed(piece)
                stop_at = first_stop(text, stops) if stops else None
                if stop_at is not None:
                    text = text[:stop_at]
                    outcome = "stop"
                    break
                # Hold back a tail that could be the start of a stop string, like llama-cpp-python does, and
                # send at most one chunk per EMIT_EVERY: each wakes the event loop, which competes with
                # llama.cpp's threads for this machine's cores.
                now = time.perf_counter()
                if job.live and now - last_emit >= EMIT_EVERY:
                    safe = len(text) - stop_prefix_len(text, stops)
                    if safe > emitted:
                        job.emit(("text", text[emitted:safe]))
                        emitted, last_emit = safe, now
                if n < max_tokens:
                    llama.eval([token])
            self._learn_speed(0, 0.0, n, time.perf_counter() - prompt_done)
        finally:
            sampler.close()
        record = GenerationRecord(outcome, len(prompt), n, sampler.rejections, closing)
        if outcome == "cancelled":
            return record
        text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            job.emit(("text", text[emitted:]))
        job.emit(("done", outcome, Usage(len(prompt), n)))
        return record

    def _fit_after_prompt(
        self, job: _Job, llama: Llama, prompt: list[int], max_tokens: int, grammar: JsonGrammar | None
    ) -> tuple[int, JsonGrammar | None]:
        """Output limit (and grammar caps) that the time left after the prompt affords; refuse if none."""
        assert self.speed is not None and job.deadline is not None
        affordable = int((job.deadline - time.monotonic()) * self.speed.decode_tps * SAFETY)
        if grammar is None:
            if affordable < MIN_TEXT_TOKENS:
                self._refuse(job, llama, prompt, MIN_TEXT_TOKENS)
            return min(max_tokens, affordable), None
        if grammar.budget <= affordable:
            return max_tokens, grammar
        from apps.platforms.local_grammar import pick

        assert job.grammars is not None
        tighter = pick(job.grammars, affordable) or job.grammars[-1]
        if tighter.floor > affordable:
            self._refuse(job, llama, prompt, tighter.floor)
        return max_tokens, tighter

    def _learn_speed(self, prompt_tokens: int, prompt_seconds: float, tokens: int, seconds: float) -> None:
        """Blend a run's measured speeds into the estimate (the machine's load changes; so does ours)."""
        speed = self.speed
        assert speed is not None
        prompt_tps, decode_tps = speed.prompt_tps, speed.decode_tps
        if prompt_tokens >= 32 and prompt_seconds > 0:
            prompt_tps = 0.7 * prompt_tps + 0.3 * prompt_tokens / prompt_seconds
        if tokens >= 16 and seconds > 0:
            decode_tps = 0.7 * decode_tps + 0.3 * tokens / seconds
        self.speed = Speed(prompt_tps, decode_tps)


def _map_llama_error(exc: Exception) -> PlatformError:
    # llama-cpp-python raises ValueError for requests it cannot serve (context overflow, bad grammar) and
    # RuntimeError when llama.cpp itself fails (decode error, out of memory); retrying neither helps.
    kind = "bad_request" if isinstance(exc, ValueError) else "server_error"
    return PlatformError(f"{type(exc).__name__}: {exc}", provider=PROVIDER, kind=kind, retryable=False)


@functools.lru_cache(maxsize=64)
def _grammar_for(schema_json: str) -> tuple[JsonGrammar, ...]:
    from apps.platforms.local_grammar import build_steps

    return build_steps(json.loads(schema_json))
