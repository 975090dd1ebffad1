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
from collections.abc import Callable
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

if TYPE_CHECKING:
    from llama_cpp import Llama

TOP_K, TOP_P, MIN_P, TYPICAL_P = 40, 0.95, 0.05, 1.0
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

    def sample(self) -> int:
        """The next token from the last evaluated position (accepted by the grammar unless it ends)."""
        token = llama_cpp.llama_sampler_sample(self._chain, self._ctx, -1)
        if self._grammar is None:
            return token
        if not self._allowed(token):
            self.rejections += 1
            token = self._resample()
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _allowed(self, token: int) -> bool:
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one.logit))

    def _resample(self) -> int:
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        view = self._all_view
        view["id"] = self._ids
        view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        view["p"] = 0.0
        array = self._all_array
        array.size, array.selected, array.sorted = self._n_vocab, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(self._all[array.selected].id)


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
