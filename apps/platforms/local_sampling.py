"""Token sampling and prompt evaluation for the local platform, on llama.cpp's low-level sampler API.

Constrained decoding the way llama.cpp's own `common_sampler` does it: sample from the ordinary chain first,
then ask the grammar whether that one token is allowed; only when it is not are the full vocabulary's logits
filtered by the grammar and the chain run again. llama-cpp-python's `Llama.generate(grammar=...)` puts the
grammar in the chain instead, so all 49,152 tokens of SmolLM2's vocabulary are checked against the grammar at
every step (5-12 ms per token here, as much as decoding itself); checking the chosen token costs microseconds,
and a JSON grammar rejects the sampled token only now and then.

The chain mirrors `Llama._init_sampler` for our settings (top-k, typical, top-p, min-p, temperature, seeded
distribution; greedy at temperature 0); the repeat penalty is 1.0, i.e. none, so it is left out.

Everything here runs on the model's own thread (a llama.cpp context is not thread-safe).
"""

from __future__ import annotations

import ctypes
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger("apps.platforms.local")

TOP_K, TOP_P, MIN_P, TYPICAL_P = 40, 0.95, 0.05, 1.0
CALIBRATION_PROMPT = 96
CALIBRATION_TOKENS = 12
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarError(ValueError):
    """llama.cpp could not parse the grammar."""


class Sampler:
    """One generation's sampler: the chain, and optionally a grammar checked after sampling."""

    def __init__(self, llama: Llama, *, temperature: float, seed: int, grammar: str | None) -> None:
        self._llama = llama
        self._ctx = llama.ctx
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if temperature <= 0:
            add(self._chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(self._chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
            add(self._chain, llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1))
            add(self._chain, llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
            add(self._chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            add(self._chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(self._chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._grammar = None
        #: How many sampled tokens the grammar rejected (each cost one full-vocabulary pass).
        self.rejections = 0
        if grammar is not None:
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not self._grammar:
                self.close()
                raise GrammarError("llama.cpp rejected the grammar")
            # One-token array for the check, and a full-vocabulary one for the rare rejection.
            self._one = llama_cpp.llama_token_data()
            self._one_array = llama_cpp.llama_token_data_array(
                data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
            )
            n_vocab = llama.n_vocab()
            self._all = (llama_cpp.llama_token_data * n_vocab)()
            self._all_view = np.frombuffer(self._all, dtype=_TOKEN_DATA)
            self._ids = np.arange(n_vocab, dtype=np.intc)
            self._all_array = llama_cpp.llama_token_data_array(
                data=ctypes.cast(self._all, llama_cpp.llama_token_data_p),
                size=n_vocab,
                selected=-1,
                sorted=False,
            )
            self._n_vocab = n_vocab

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def sample(self, closing: JsonScan | None = None) -> int:
        """The next token from the last evaluated position (accepted by the grammar unless it ends).

        `closing` (grammar only): steer the JSON to its end instead (see `_close`)."""
        if closing is not None and self._grammar is not None:
            token = self._close(closing)
        else:
            token = llama_cpp.llama_sampler_sample(self._chain, self._ctx, -1)
            if self._grammar is None:
                return token
            if not self._allowed(token):
                self.rejections += 1
                token = self._resample()
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _close(self, scan: JsonScan) -> int:
        """The grammar-allowed token that ends the JSON soonest, by a greedy rule: inside a string, one that
        closes it; outside, one that closes an array or object; else the likeliest allowed token (a key or
        a value the grammar still requires). With strings and arrays capped, every step of this ends
        something, so the answer completes in about as many tokens as the schema's smallest valid value."""
        logits = self._grammar_logits()
        allowed = np.isfinite(logits)
        kinds = closing_kinds(self._llama)
        wanted = kinds == (_QUOTE if scan.in_string else _BRACKET)
        pool = allowed & wanted
        if not pool.any():
            pool = allowed
        return int(np.argmax(np.where(pool, logits, -np.inf)))

    def _grammar_logits(self) -> np.ndarray:
        """The last position's logits with the grammar applied (-inf where not allowed), all tokens."""
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        view = self._all_view
        view["id"] = self._ids
        view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        view["p"] = 0.0
        array = self._all_array
        array.size, array.selected, array.sorted = self._n_vocab, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return view["logit"]

    def _allowed(self, token: int) -> bool:
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one.logit))

    def _resample(self) -> int:
        self._grammar_logits()
        array = self._all_array
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(self._all[array.selected].id)


class JsonScan:
    """Whether the JSON written so far ends inside a string (for the closing rule), fed piece by piece."""

    __slots__ = ("escaped", "in_string")

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def feed(self, piece: str) -> None:
        for char in piece:
            if self.escaped:
                self.escaped = False
            elif char == "\\" and self.in_string:
                self.escaped = True
            elif char == '"':
                self.in_string = not self.in_string


_OTHER, _QUOTE, _BRACKET = 0, 1, 2
_kinds: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def closing_kinds(llama: Llama) -> np.ndarray:
    """Per vocabulary token: _QUOTE if its text starts with a double quote (ends a string), _BRACKET if it
    starts, after optional spaces, with `]` or `}` (ends an array or object), else _OTHER. Computed once per
    loaded model (~0.1 s for 49,152 tokens)."""
    kinds = _kinds.get(llama)
    if kinds is None:
        kinds = np.zeros(llama.n_vocab(), dtype=np.int8)
        for token in range(len(kinds)):
            piece = llama.detokenize([token], special=False)
            if piece.startswith(b'"'):
                kinds[token] = _QUOTE
            elif piece.lstrip(b" ").startswith((b"]", b"}")):
                kinds[token] = _BRACKET
        _kinds[llama] = kinds
    return kinds


def cached_prefix(llama: Llama, prompt: list[int]) -> int:
    """How many leading tokens of `prompt` the model's cache already holds."""
    cached = llama.input_ids[: llama.n_tokens]
    n = min(len(cached), len(prompt))
    if not n:
        return 0
    diff = np.flatnonzero(cached[:n] != np.asarray(prompt[:n], dtype=cached.dtype))
    return int(diff[0]) if diff.size else n


#: Prompt tokens evaluated between two checks of the stop flag (llama.cpp cannot be interrupted mid-batch).
PROMPT_CHUNK = 128


def evaluate_prompt(
    llama: Llama, prompt: list[int], progress: Callable[[int], bool] = lambda done: True
) -> int:
    """Evaluate `prompt`, reusing the longest cached prefix (as `Llama.generate` does); returns how many
    prompt tokens were actually evaluated. At least one token is evaluated, so fresh logits exist.

    Evaluates PROMPT_CHUNK tokens at a time and calls `progress(tokens of the prompt now in the cache)`
    after each chunk; when it returns False evaluation stops there (a cancel, a deadline) and -1 is
    returned."""
    reuse = min(cached_prefix(llama, prompt), len(prompt) - 1)
    if reuse > 0 and llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
        llama.n_tokens = reuse
    else:
        llama.reset()
    start = llama.n_tokens
    for i in range(start, len(prompt), PROMPT_CHUNK):
        llama.eval(prompt[i : i + PROMPT_CHUNK])
        if not progress(llama.n_tokens):
            return -1
    return len(prompt) - start


def calibrate(llama: Llama) -> tuple[float, float]:
    """Prompt and decode tokens/s of this model here: one short prompt batch and a few greedy tokens (~1 s)."""
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
    return len(prompt) / prompt_seconds, CALIBRATION_TOKENS / decode_seconds


def chat_formatter(llama: Llama) -> Callable[..., Any]:
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


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
