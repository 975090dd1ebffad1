"""Tokens/s of our LocalPlatform (generate and stream) next to raw llama-cpp-python on the same model, prompt
and settings (greedy, same max_tokens), with and without a JSON grammar, plus how long a cancel takes to free
the model.

    .venv/bin/python bench/local.py [--runs 5] [--max-tokens 128] [--threads 1]

The grammar variants use one grammar (our capped grammar of SCHEMA for max_tokens): raw llama-cpp-python
applies it to the whole vocabulary at every step (`create_chat_completion(grammar=...)`); LocalPlatform
samples first and checks only the chosen token. Greedy decoding picks the same tokens either way.

Runs are interleaved (raw, ours, raw stream, ours stream, ...) so machine noise hits every variant alike.
All variants share the one loaded model, so llama.cpp's prompt-prefix cache helps each of them the same way.
Prints a table and writes bench/results/local.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version

from _root import ROOT

from apps.platforms.base import ChatMessage, CompletionRequest
from apps.platforms.local import LocalPlatform
from apps.platforms.local_grammar import build

RESULTS = ROOT / "bench" / "results"
PROMPT = "Write a short story about a robot who learns to paint."
JSON_PROMPT = "Describe a robot who learns to paint, as JSON: a title, a summary and a few scenes."
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "scenes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "summary", "scenes"],
    "additionalProperties": False,
}


def raw_generate(llama, max_tokens: int, prompt: str = PROMPT, grammar=None) -> tuple[int, float]:
    started = time.perf_counter()
    out = llama.create_chat_completion(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        grammar=grammar,
    )
    return out["usage"]["completion_tokens"], time.perf_counter() - started


def raw_stream(llama, max_tokens: int) -> tuple[int, float, float]:
    """Raw streams report no usage: count the content deltas (one per token for this model's vocabulary)."""
    started = time.perf_counter()
    first = None
    pieces = 0
    for chunk in llama.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            first = first if first is not None else time.perf_counter() - started
            pieces += 1
    return pieces, time.perf_counter() - started, first or 0.0


async def ours_generate(local: LocalPlatform, request: CompletionRequest) -> tuple[int, float]:
    started = time.perf_counter()
    completion = await local.generate(request)
    return completion.usage.output_tokens, time.perf_counter() - started


async def ours_stream(local: LocalPlatform, request: CompletionRequest) -> tuple[int, float, float]:
    started = time.perf_counter()
    first = None
    tokens = 0
    async for chunk in local.stream(request):
        if chunk.text and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.output_tokens
    return tokens, time.perf_counter() - started, first or 0.0


async def cancel_latency(local: LocalPlatform) -> float:
    """Seconds from task.cancel() until the model's thread is free for the next request."""
    long = CompletionRequest(
        model=local.default_model, messages=[ChatMessage(role="user", content=PROMPT)], max_tokens=1500
    )
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in local.stream(long):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0.2)  # well into generation
    t0 = time.perf_counter()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await local.run_on_model(lambda llama: None)  # queued behind the cancelled job: runs once it is gone
    elapsed = time.perf_counter() - t0
    assert local.last_run is not None and local.last_run.outcome == "cancelled"
    return elapsed


PAIRS = (
    ("generate", "LocalPlatform.generate", "raw llama-cpp create_chat_completion"),
    ("stream", "LocalPlatform.stream", "raw llama-cpp create_chat_completion(stream=True)"),
    ("JSON grammar", "LocalPlatform.generate + JSON schema", "raw llama-cpp + JSON grammar"),
)


def summarise(samples: list[tuple[float, ...]]) -> dict[str, float]:
    rates = [s[0] / s[1] for s in samples]
    out = {
        "tokens": samples[0][0],
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_min": min(rates),
        "tokens_per_s_max": max(rates),
        "seconds_median": statistics.median(s[1] for s in samples),
    }
    if len(samples[0]) > 2:
        out["first_token_ms_median"] = statistics.median(s[2] for s in samples) * 1000
    return out


async def main(runs: int, max_tokens: int, threads: int) -> dict[str, object]:
    from llama_cpp import LlamaGrammar

    local = LocalPlatform(default_model="smollm2-135m-instruct", n_ctx=2048, n_threads=threads)
    load_started = time.perf_counter()
    llama = await local.load()
    load_seconds = time.perf_counter() - load_started
    request = CompletionRequest(
        model=local.default_model,
        messages=[ChatMessage(role="user", content=PROMPT)],
        max_tokens=max_tokens,
        temperature=0.0,
    )
    json_request = CompletionRequest(
        model=local.default_model,
        messages=[ChatMessage(role="user", content=JSON_PROMPT)],
        max_tokens=max_tokens,
        temperature=0.0,
        json_schema=SCHEMA,
    )
    grammar = LlamaGrammar.from_string(build(SCHEMA, max_tokens).text, verbose=False)
    variants: dict[str, Callable[[], object]] = {
        "raw llama-cpp create_chat_completion": lambda: raw_generate(llama, max_tokens),
        "LocalPlatform.generate": lambda: ours_generate(local, request),
        "raw llama-cpp create_chat_completion(stream=True)": lambda: raw_stream(llama, max_tokens),
        "LocalPlatform.stream": lambda: ours_stream(local, request),
        "raw llama-cpp + JSON grammar": lambda: raw_generate(llama, max_tokens, JSON_PROMPT, grammar),
        "LocalPlatform.generate + JSON schema": lambda: ours_generate(local, json_request),
    }
    samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
    for run in range(runs + 1):  # run 0 warms up every variant and is discarded
        for name, call in variants.items():
            result = call()
            if asyncio.iscoroutine(result):
                result = await result
            if run:
                samples[name].append(result)  # type: ignore[arg-type]
    cancels = [await cancel_latency(local) for _ in range(runs)]
    return {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "runs": runs,
        "model_path": local.model_path,
        "n_threads": local.n_threads,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "llama_cpp_python": version("llama_cpp_python"),
        "model_load_seconds": load_seconds,
        "variants": {name: summarise(s) for name, s in samples.items()},
        # Ours / raw tokens/s, paired run by run (the same machine noise hits both), median over runs.
        "ratios": {
            label: statistics.median(
                (o[0] / o[1]) / (r[0] / r[1]) for o, r in zip(samples[ours], samples[raw], strict=True)
            )
            for label, ours, raw in PAIRS
        },
        "cancel_to_free_ms_median": statistics.median(cancels) * 1000,
        "cancel_to_free_ms_max": max(cancels) * 1000,
    }


def print_table(result: dict[str, object]) -> None:
    variants: dict[str, dict[str, float]] = result["variants"]  # type: ignore[assignment]
    width = max(len(n) for n in variants)
    print(
        f"\nSmolLM2-135M Q4_1, {result['n_threads']} threads, max_tokens={result['max_tokens']}, greedy, "
        f"{result['runs']} runs each (median [min-max])"
    )
    print(f"{'variant':<{width}}  tokens  tokens/s                 first token")
    for name, v in variants.items():
        first = f"{v['first_token_ms_median']:.0f} ms" if "first_token_ms_median" in v else "-"
        rate = f"{v['tokens_per_s_median']:.1f} [{v['tokens_per_s_min']:.1f}-{v['tokens_per_s_max']:.1f}]"
        print(f"{name:<{width}}  {v['tokens']:>6.0f}  {rate:<23}  {first}")
    ratios: dict[str, float] = result["ratios"]  # type: ignore[assignment]
    print("ours / raw tokens/s (paired median): " + ", ".join(f"{k} {v:.0%}" for k, v in ratios.items()))
    print(
        f"model load: {result['model_load_seconds']:.2f} s; cancel -> model free: "
        f"median {result['cancel_to_free_ms_median']:.1f} ms, max {result['cancel_to_free_ms_max']:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (LOCAL_THREADS)")
    args = parser.parse_args()
    outcome = asyncio.run(main(args.runs, args.max_tokens, args.threads))
    print_table(outcome)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "local.json" if args.threads == 1 else f"local-{args.threads}threads.json"
    (RESULTS / name).write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")
