"""Tokens/s of our LocalPlatform (generate and stream) next to raw llama-cpp-python on the same model, prompt
and settings, with and without a JSON grammar, plus how long a cancel takes to free the model; optionally
the same for several LOCAL_THREADS values. Each pair is compared in tokens per wall-clock second and in
tokens per CPU second of this process (steadier on a shared machine: it leaves out waiting for a core).

    .venv/bin/python bench/local.py [--rounds 7] [--max-tokens 128] [--threads 1] [--sweep-threads 1,2]

A clean comparison: ours and raw run in this one process on the one loaded model (so the same n_threads),
with the same prompt, greedy decoding (temperature 0) and the same seed, interleaved: every round runs each
pair back to back, in alternating order (raw first in even rounds, ours first in odd ones), so that machine
noise and the prompt-prefix cache hit both alike. Round 0 warms up and is discarded. The ratio is computed
per round (ours / raw tokens/s of that round's pair), and the median over rounds is reported with its range.

The grammar pair uses one grammar (the capped grammar our platform picks for the schema at max_tokens):
raw llama-cpp-python applies it to the whole vocabulary at every step (`create_chat_completion(grammar=...)`);
LocalPlatform samples first and checks only the chosen token. Greedy decoding picks the same tokens either way.

--sweep-threads loads one model per thread count and measures LocalPlatform.generate with each, interleaved
the same way (to check which LOCAL_THREADS default measures best here).
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

from apps.platforms.base import ChatMessage, CompletionRequest, Sampling
from apps.platforms.local import LocalPlatform
from apps.platforms.local_grammar import build_steps, pick

RESULTS = ROOT / "bench" / "results"
SEED = 1234
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
        seed=SEED,
        grammar=grammar,
    )
    return out["usage"]["completion_tokens"], time.perf_counter() - started


def raw_stream(llama, max_tokens: int) -> tuple[int, float, float]:
    """Raw streams report no usage: count the content deltas (one per token for this model's vocabulary)."""
    started = time.perf_counter()
    first = None
    pieces = 0
    for chunk in llama.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=SEED,
        stream=True,
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


def request(prompt: str, max_tokens: int, **kwargs: object) -> CompletionRequest:
    return CompletionRequest(
        model="smollm2-135m-instruct",
        messages=[ChatMessage(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=0.0,
        sampling=Sampling(seed=SEED),
        **kwargs,  # type: ignore[arg-type]
    )


async def measure(call: Callable[[], object]) -> tuple[tuple[float, ...], float]:
    """The call's (tokens, seconds[, first token]) and the CPU seconds this process spent on it (every
    thread: llama.cpp's, ours, the event loop's)."""
    cpu = time.process_time()
    result = call()
    if asyncio.iscoroutine(result):
        result = await result
    return result, time.process_time() - cpu  # type: ignore[return-value]


def ratio_summary(ours: list[tuple[float, ...]], raw: list[tuple[float, ...]]) -> dict[str, float]:
    ratios = [(o[0] / o[1]) / (r[0] / r[1]) for o, r in zip(ours, raw, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


async def main(rounds: int, max_tokens: int, threads: int, sweep: list[int]) -> dict[str, object]:
    from llama_cpp import LlamaGrammar

    local = LocalPlatform(default_model="smollm2-135m-instruct", n_ctx=2048, n_threads=threads)
    load_started = time.perf_counter()
    llama = await local.load()
    load_seconds = time.perf_counter() - load_started
    # The grammar LocalPlatform picks for SCHEMA under this limit, given to raw too.
    steps = build_steps(SCHEMA)
    chosen = pick(steps, max_tokens) or steps[-1]
    json_max = max_tokens  # so that LocalPlatform picks `chosen` too
    grammar = LlamaGrammar.from_string(chosen.text, verbose=False)
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "generate": (
            lambda: raw_generate(llama, max_tokens),
            lambda: ours_generate(local, request(PROMPT, max_tokens)),
        ),
        "stream": (
            lambda: raw_stream(llama, max_tokens),
            lambda: ours_stream(local, request(PROMPT, max_tokens)),
        ),
        "JSON grammar": (
            lambda: raw_generate(llama, json_max, JSON_PROMPT, grammar),
            lambda: ours_generate(local, request(JSON_PROMPT, json_max, json_schema=SCHEMA)),
        ),
    }
    samples: dict[str, dict[str, list[tuple[float, ...]]]] = {n: {"raw": [], "ours": []} for n in pairs}
    cpu: dict[str, dict[str, list[tuple[float, float]]]] = {n: {"raw": [], "ours": []} for n in pairs}
    for round_ in range(rounds + 1):  # round 0 warms up every variant and is discarded
        for name, (raw, ours) in pairs.items():
            order = (("raw", raw), ("ours", ours)) if round_ % 2 == 0 else (("ours", ours), ("raw", raw))
            for side, call in order:
                result = await measure(call)
                if round_:
                    samples[name][side].append(result[0])
                    cpu[name][side].append((result[0][0], result[1]))
    cancels = [await cancel_latency(local) for _ in range(rounds)]
    outcome: dict[str, object] = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "json_max_tokens": json_max,
        "rounds": rounds,
        "seed": SEED,
        "model_path": local.model_path,
        "n_threads": local.n_threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "llama_cpp_python": version("llama_cpp_python"),
        "model_load_seconds": load_seconds,
        "variants": {
            f"{name} {side}": summarise(runs)
            for name, sides in samples.items()
            for side, runs in sides.items()
        },
        # Ours / raw tokens/s, paired round by round (the same machine noise hits both).
        "ratios": {name: ratio_summary(s["ours"], s["raw"]) for name, s in samples.items()},
        # The same per tokens per CPU second of this process (every thread): on a shared machine wall time
        # also counts waiting for a core; CPU time counts only the work, the steadier efficiency figure.
        "cpu_ratios": {name: ratio_summary(c["ours"], c["raw"]) for name, c in cpu.items()},
        "cancel_to_free_ms_median": statistics.median(cancels) * 1000,
        "cancel_to_free_ms_max": max(cancels) * 1000,
    }
    if sweep:
        outcome["threads"] = await thread_sweep(sweep, rounds, max_tokens)
    return outcome


async def thread_sweep(counts: list[int], rounds: int, max_tokens: int) -> dict[str, dict[str, float]]:
    """LocalPlatform.generate tokens/s per n_threads, one loaded model each, interleaved round by round."""
    platforms = {
        n: LocalPlatform(default_model="smollm2-135m-instruct", n_ctx=2048, n_threads=n) for n in counts
    }
    for platform_ in platforms.values():
        await platform_.load()
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(rounds + 1):
        order = counts if round_ % 2 == 0 else list(reversed(counts))
        for n in order:
            tokens, seconds = await ours_generate(platforms[n], request(PROMPT, max_tokens))
            if round_:
                rates[n].append(tokens / seconds)
    return {
        str(n): {"tokens_per_s_median": statistics.median(r), "min": min(r), "max": max(r)}
        for n, r in rates.items()
    }


def print_table(result: dict[str, object]) -> None:
    variants: dict[str, dict[str, float]] = result["variants"]  # type: ignore[assignment]
    width = max(len(n) for n in variants)
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])  # type: ignore[attr-defined]
    print(
        f"\nSmolLM2-135M Q4_1, {result['n_threads']} threads, max_tokens={result['max_tokens']} "
        f"(JSON {result['json_max_tokens']}), greedy, seed {result['seed']}, {result['rounds']} rounds "
        f"(median [min-max]), load average {load}"
    )
    print(f"{'variant':<{width}}  tokens  tokens/s                 first token")
    for name, v in variants.items():
        first = f"{v['first_token_ms_median']:.0f} ms" if "first_token_ms_median" in v else "-"
        rate = f"{v['tokens_per_s_median']:.1f} [{v['tokens_per_s_min']:.1f}-{v['tokens_per_s_max']:.1f}]"
        print(f"{name:<{width}}  {v['tokens']:>6.0f}  {rate:<23}  {first}")
    ratios: dict[str, dict[str, float]] = result["ratios"]  # type: ignore[assignment]
    print(
        "ours / raw tokens/s, per-round pairs, median [min-max]: "
        + ", ".join(f"{k} {v['median']:.0%} [{v['min']:.0%}-{v['max']:.0%}]" for k, v in ratios.items())
    )
    cpu: dict[str, dict[str, float]] = result["cpu_ratios"]  # type: ignore[assignment]
    print(
        "ours / raw tokens per CPU second, per-round pairs, median [min-max]: "
        + ", ".join(f"{k} {v['median']:.0%} [{v['min']:.0%}-{v['max']:.0%}]" for k, v in cpu.items())
    )
    print(
        f"model load: {result['model_load_seconds']:.2f} s; cancel -> model free: "
        f"median {result['cancel_to_free_ms_median']:.1f} ms, max {result['cancel_to_free_ms_max']:.1f} ms"
    )
    for n, v in (result.get("threads") or {}).items():  # type: ignore[attr-defined]
        print(f"LOCAL_THREADS={n}: {v['tokens_per_s_median']:.1f} tokens/s [{v['min']:.1f}-{v['max']:.1f}]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (LOCAL_THREADS)")
    parser.add_argument("--sweep-threads", default="", help="comma-separated LOCAL_THREADS values to compare")
    args = parser.parse_args()
    sweep = [int(n) for n in args.sweep_threads.split(",") if n]
    outcome = asyncio.run(main(args.rounds, args.max_tokens, args.threads, sweep))
    print_table(outcome)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "local.json" if args.threads == 1 else f"local-{args.threads}threads.json"
    (RESULTS / name).write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")
