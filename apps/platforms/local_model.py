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
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from apps.platforms.base import Usage
from apps.platforms.errors import PlatformError

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
#: Share of the calibrated speed counted on (the machine's load varies between calibration and the run).
SAFETY = 0.8
#: Tokens allowed past a grammar's estimated budget (plus a quarter of it) before generation is cut: the
#: budget converts characters to tokens at an average rate.
BUDGET_MARGIN = 32
CALIBRATION_PROMPT = 96
CALIBRATION_TOKENS = 12
#: Every fail-fast refusal starts with this.
REFUSAL_PREFIX = "the local model is too slow for this run's deadline"
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


@dataclass(frozen=True, slots=True)
class Speed:
    """Tokens per second of this model on this machine, measured when it loads and refreshed by each run."""

    prompt_tps: float
    decode_tps: float

    def seconds(self, prompt_tokens: int, output_tokens: int) -> float:
        return prompt_tokens / self.prompt_tps + output_tokens / self.decode_tps


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
                self._format = _chat_formatter(llama)
                self.speed = calibrate(llama)
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
        affordable = self._affordable(job, llama, prompt)
        grammar = None
        if job.grammars:
            from apps.platforms.local_grammar import DEFAULT_BUDGET, pick

            target = min(limit or DEFAULT_BUDGET, room if affordable is None else affordable)
            grammar = pick(job.grammars, target)
            if grammar is None:
                # Even the tightest caps are over the limit: refuse only if the deadline is the reason.
                grammar = job.grammars[-1]
                if affordable is not None and grammar.budget > affordable:
                    self._refuse(job, llama, prompt, grammar.budget)
            max_tokens = min(room, limit or grammar.budget + grammar.budget // 4 + BUDGET_MARGIN)
        else:
            max_tokens = min(room, limit) if limit else room
            if affordable is not None:
                if affordable < MIN_TEXT_TOKENS:
                    self._refuse(job, llama, prompt, MIN_TEXT_TOKENS)
                max_tokens = min(max_tokens, affordable)
        return self._decode(job, llama, prompt, max_tokens, rendered.stop, grammar)

    def _affordable(self, job: _Job, llama: Llama, prompt: list[int]) -> int | None:
        """Output tokens that fit before the job's deadline at calibrated speeds (None: no deadline)."""
        if job.deadline is None:
            return None
        from apps.platforms.local_sampling import cached_prefix

        assert self.speed is not None
        # Both speeds discounted: a long prompt evaluates slower per token than the calibration's short one,
        # and the machine's load may have risen since.
        prompt_seconds = self.speed.seconds(len(prompt) - cached_prefix(llama, prompt), 0) / SAFETY
        left = job.deadline - time.monotonic() - prompt_seconds
        return max(0, int(left * self.speed.decode_tps * SAFETY))

    def _refuse(self, job: _Job, llama: Llama, prompt: list[int], output_tokens: int) -> NoReturn:
        """Fail fast: the run cannot finish by its deadline at this machine's calibrated speeds."""
        from apps.platforms.local_sampling import cached_prefix

        assert self.speed is not None and job.deadline is not None
        to_evaluate = len(prompt) - cached_prefix(llama, prompt)
        need = self.speed.seconds(to_evaluate, output_tokens) / SAFETY
        left = job.deadline - time.monotonic()
        raise PlatformError(
            f"{REFUSAL_PREFIX}: {Path(self.path).name} would need about {need:.0f} s for this request "
            f"({to_evaluate} prompt tokens at {self.speed.prompt_tps:.0f}/s, at least {output_tokens} output "
            f"tokens at {self.speed.decode_tps:.0f}/s) but {max(left, 0):.0f} s are left. Configure a "
            "provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY), point LOCAL_MODEL_PATH "
            f"at a bigger or faster GGUF model, or raise the agent's timeout_seconds to {math.ceil(need) + 5} "
            "or more",
            provider=PROVIDER,
            kind="unavailable",
            retryable=False,
        )

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

        from apps.platforms.local_sampling import Sampler, evaluate_prompt

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
        try:
            while n < max_tokens:
                # Checked once per token: a cancelled request stops within one decode step (milliseconds).
                if job.cancel.is_set():
                    outcome = "cancelled"
                    break
                # Free text ends ("length") just before the deadline rather than being cut by it: the
                # answer so far is an answer. JSON cut short is not; the platform's timeout handles that.
                if grammar is None and deadline is not None and time.monotonic() > deadline - END_MARGIN:
                    break
                token = sampler.sample()
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    outcome = "stop"
                    break
                n += 1
                job.completion_tokens = n
                # No prev_tokens: llama.cpp's own tokenizer ignores them (only the HF tokenizer uses them).
                text += decoder.decode(llama.detokenize([token]))
                stop_at = _first_stop(text, stops) if stops else None
                if stop_at is not None:
                    text = text[:stop_at]
                    outcome = "stop"
                    break
                # Hold back a tail that could be the start of a stop string, like llama-cpp-python does, and
                # send at most one chunk per EMIT_EVERY: each wakes the event loop, which competes with
                # llama.cpp's threads for this machine's cores.
                now = time.perf_counter()
                if now - last_emit >= EMIT_EVERY:
                    safe = len(text) - _stop_prefix_len(text, stops)
                    if safe > emitted:
                        job.emit(("text", text[emitted:safe]))
                        emitted, last_emit = safe, now
                if n < max_tokens:
                    llama.eval([token])
            self._learn_speed(0, 0.0, n, time.perf_counter() - prompt_done)
        finally:
            sampler.close()
        record = GenerationRecord(outcome, len(prompt), n, sampler.rejections)
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
        tighter = pick(job.grammars, affordable)
        if tighter is None:
            self._refuse(job, llama, prompt, job.grammars[-1].budget)
        return min(max_tokens, tighter.budget + tighter.budget // 4 + BUDGET_MARGIN), tighter

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


def calibrate(llama: Llama) -> Speed:
    """Prompt and decode speed of this model here: one short prompt batch and a few greedy tokens (~1 s)."""
    from apps.platforms.local_sampling import Sampler

    text = ("The quick brown fox jumps over the lazy dog. " * 12).encode()
    # Within any context window (tests load tiny ones): room for the prompt and the sampled tokens.
    size = max(8, min(CALIBRATION_PROMPT, len(llama.input_ids) - CALIBRATION_TOKENS - 8))
    prompt = llama.tokenize(text, add_bos=True)[:size]
    llama.reset()
    llama.eval(prompt[:8])  # the first decode allocates llama.cpp's compute buffers: not part of the speed
    llama.reset()
    started = time.perf_counter()
    llama.eval(prompt)
    prompt_seconds = time.perf_counter() - started
    sampler = Sampler(llama, temperature=0.0, seed=0, grammar=None)
    try:
        started = time.perf_counter()
        for _ in range(CALIBRATION_TOKENS):
            llama.eval([sampler.sample()])
        decode_seconds = time.perf_counter() - started
    finally:
        sampler.close()
    llama.reset()
    return Speed(len(prompt) / prompt_seconds, CALIBRATION_TOKENS / decode_seconds)


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
def _grammar_for(schema_json: str) -> tuple[JsonGrammar, ...]:
    from apps.platforms.local_grammar import build_steps

    return build_steps(json.loads(schema_json))
