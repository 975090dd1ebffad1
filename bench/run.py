"""`make bench`: our engine against the raw SDK, LiteLLM and pydantic-ai, side by side, in one run.

    .venv/bin/python bench/run.py            # BENCH_QUICK=1 for a short smoke run (numbers not comparable)

1. Makes (once) the bench venv .venv-bench with bench/requirements-compare.txt: litellm[proxy],
   pydantic-ai-slim[openai], matplotlib. Our own venv never gets them.
2. Starts one fake OpenAI-compatible server (bench/compare/fake.py): `/v1` answers at once, `/slow50/v1`
   after 50 ms. Everything listens on 127.0.0.1; LiteLLM uses its bundled cost map and sends no telemetry.
3. In-process, each in its own process, same fake: the raw `openai` SDK (the floor, in each venv), our
   `execution_engine.execute_agent` / `execute_streaming` on PostgreSQL (every call writes its real row:
   INSERT running, final UPDATE with attempts, tokens and cost), `litellm.acompletion`, pydantic-ai
   `Agent.run` / `run_stream`.
4. Over HTTP, each server in its own process, loaded by a lean HTTP/1.1 generator (bench/compare/load.py) at
   concurrency 1, 16, 64 (bounded in requests and seconds): the fake itself (the floor), our execute
   endpoint under uvicorn on PostgreSQL (DEBUG off, log level warning, token auth), the LiteLLM proxy (no
   database, master key auth), each with WEB_CONCURRENCY server processes (default: one per core).
5. Writes bench/results/latest.md, latest.json, latest.png (overhead and throughput) and prints the table.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from _root import ROOT

from bench.compare import procs, report
from bench.compare.common import API_KEY, MESSAGES, MODEL, TASK, summary
from bench.compare.load import LoadResult, Pool, Target, first_tokens

QUICK = os.environ.get("BENCH_QUICK") == "1"
VARIANTS = {"instant": "/v1", "50ms": "/slow50/v1"}
CALLS = {"instant": 40 if QUICK else 300, "50ms": 20 if QUICK else 100}
STREAM_CALLS = {"instant": 10 if QUICK else 100, "50ms": 6 if QUICK else 40}
BLOCK = {"instant": 20, "50ms": 10}  # calls per turn
HTTP_TTFT_CALLS = {"instant": 9 if QUICK else 60, "50ms": 6 if QUICK else 30}
CONCURRENCY = (1, 16, 64)
# Per target and concurrency, split in LOAD_ROUNDS turns. Eight turns, not two: the HTTP ratio is also given
# turn by turn (report.py), and on this shared 2-core machine two runs of the same code differed by 10%; and
# the proxy's processes share one socket, so in many turns one of them takes every connection (report.py
# gives the ratio of the turns where both servers split the load, and four turns often had none).
LOAD_SECONDS = 1.5 if QUICK else 12.0
LOAD_ROUNDS = 2 if QUICK else 8
LOAD_MAX_REQUESTS = 3000
MASTER_KEY = "sk-bench-master-0123456789abcdef0123456789abcdef"  # a local proxy's key, not a secret
BENCH_DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_compare")
BENCH_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PROXY_MODELS = {"instant": MODEL, "50ms": f"{MODEL}-slow50"}


def ours_env(base_url: str) -> dict[str, str]:
    """Our processes: the bench database, the fake as the only platform, production-like settings."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=BENCH_DB,
        DJANGO_SETTINGS_MODULE="config.settings",
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=base_url,
        ANTHROPIC_API_KEY="",
        GEMINI_API_KEY="",
        LOCAL_ENABLED="false",
        PLATFORM_FALLBACK_ORDER="openai",
        DEFAULT_PLATFORM="openai",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        CELERY_BROKER_URL="",
        # Several server processes (WEB_CONCURRENCY, one per core) share the rate limits and the token and
        # agent caches through Redis, as a deployment of more than one process must (README: Scaling out);
        # the database of its own keeps them apart from anything else on this Redis.
        REDIS_URL=BENCH_REDIS,
        # The per-user limits would refuse a load test; they are not what is measured.
        THROTTLE_USER_RATE="100000000/min",
        THROTTLE_EXECUTE_RATE="100000000/min",
        # Plain HTTP on 127.0.0.1, as `make run`: no redirect to HTTPS (settings' production default).
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
    )
    return env


def bench_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}  # proxy: no database
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
        LITELLM_MODE="PRODUCTION",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


# ---------------------------------------------------------------------------------------------- in-process
IN_PROCESS = ("floor_project", "ours", "floor_bench", "litellm", "pydantic_ai")


def _workers(base: str, variant: str) -> list[procs.Worker]:
    project, bench = str(ROOT / ".venv" / "bin" / "python"), str(procs.bench_python())
    argvs = {
        "floor_project": [project, "-m", "bench.compare.ours", "inprocess", "--contender", "openai"],
        "ours": [project, "-m", "bench.compare.ours", "inprocess", "--contender", "ours"],
        "floor_bench": [bench, "-m", "bench.compare.others", "openai"],
        "litellm": [bench, "-m", "bench.compare.others", "litellm"],
        "pydantic_ai": [bench, "-m", "bench.compare.others", "pydantic_ai"],
    }
    workers = []
    for name in IN_PROCESS:
        env = ours_env(base) if argvs[name][0] == project else bench_env()
        workers.append(procs.Worker(f"{name}-{variant}", [*argvs[name], "--base-url", base], env))
    return workers


def _blocks(workers: list[procs.Worker], command: str, total: int, block: int) -> dict[str, dict[str, Any]]:
    """`total` samples from each worker in blocks of `block`, the workers taking turns (starting with a
    different one each round), so that all of them see the same moments of a noisy machine."""
    merged: dict[str, dict[str, Any]] = {w.name: {"latencies": [], "cpu_ms": 0.0} for w in workers}
    for round_index in range(0, total, block):
        shift = (round_index // block) % len(workers)
        for worker in workers[shift:] + workers[:shift]:
            answer = worker.ask(f"{command} {min(block, total - round_index)}")
            merged[worker.name]["latencies"] += answer["latencies"]
            merged[worker.name]["cpu_ms"] += answer["cpu_ms"]
    return merged


def _stats(samples: dict[str, Any]) -> dict[str, Any]:
    calls = max(1, len(samples["latencies"]))
    return {**summary(samples["latencies"]), "cpu_ms_per_call": round(samples["cpu_ms"] / calls, 3)}


def in_process(fake_url: str, before: Callable[[], object]) -> dict[str, Any]:
    """`before()` is called once the workers are up, before anything is measured."""
    results: dict[str, Any] = {}
    for variant, path in VARIANTS.items():
        procs.log(f"in-process, {variant} fake: starting {', '.join(IN_PROCESS)}")
        workers = _workers(fake_url + path, variant)
        try:
            for worker in workers:
                worker.ready()
            before()
            procs.log(f"  {CALLS[variant]} calls each, in turns")
            calls = _blocks(workers, "calls", CALLS[variant], BLOCK[variant])
            procs.log(f"  {STREAM_CALLS[variant]} streamed calls each, in turns")
            firsts = _blocks(workers, "first", STREAM_CALLS[variant], max(1, BLOCK[variant] // 2))
            results[variant] = {}
            for name, worker in zip(IN_PROCESS, workers, strict=True):
                final = worker.finish()
                results[variant][name] = {
                    **final,
                    "calls": _stats(calls[worker.name]),
                    "ttft": _stats(firsts[worker.name]),
                }
        finally:
            for worker in workers:
                worker.kill()
    return results


# ---------------------------------------------------------------------------------------------- HTTP
def fake_target(fake_url: str, variant: str) -> Target:
    body = {"model": MODEL, "messages": MESSAGES}
    return Target(
        "fake", fake_url + VARIANTS[variant] + "/chat/completions", {}, body, {**body, "stream": True}
    )


def ours_target(url: str, token: str) -> Target:
    body = {"input_data": {"task": TASK}}
    return Target(
        "ours",
        f"{url}/api/v1/agents/bench-agent/execute/",
        {"Authorization": f"Token {token}"},
        body,
        {**body, "stream": True},
        {"Accept": "text/event-stream"},
    )


def proxy_target(url: str, variant: str) -> Target:
    body = {"model": PROXY_MODELS[variant], "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    return Target("litellm_proxy", f"{url}/v1/chat/completions", headers, body, {**body, "stream": True})


async def _turn(pool: Pool, seconds: float, pid: int | None, fake_pid: int | None) -> dict[str, Any]:
    postgres = procs.postmaster_pid()
    before = procs.cpu_ticks(pid) if pid else {}
    db_cpu = procs.cpu_seconds(postgres) if postgres else 0.0
    fake_cpu = procs.cpu_seconds(fake_pid) if fake_pid else 0.0
    generator_cpu = time.process_time()  # this process: the load generator, nothing else runs meanwhile
    idle, total = procs.machine_ticks()
    result = await pool.run(max_requests=LOAD_MAX_REQUESTS, duration=seconds)
    generator_cpu = time.process_time() - generator_cpu
    idle_after, total_after = procs.machine_ticks()
    after = procs.cpu_ticks(pid) if pid else {}
    split = procs.cpu_by_process(pid, before) if pid else {}
    used = (
        [now - split.get(member, 0.0) for member, now in procs.cpu_by_process(pid, after).items()]
        if pid
        else []
    )
    server_cpu = procs.cpu_seconds(pid, after) - procs.cpu_seconds(pid, before) if pid else 0.0
    return {
        "result": result,
        "server_cpu_ms": server_cpu * 1000,
        "db_cpu_ms": (procs.cpu_seconds(postgres) - db_cpu) * 1000 if postgres else 0.0,
        "fake_cpu_ms": (procs.cpu_seconds(fake_pid) - fake_cpu) * 1000 if fake_pid else 0.0,
        "generator_cpu_ms": generator_cpu * 1000,
        # Idle cores while the server was loaded: CPU the server could have used and did not.
        "machine_idle_share": (idle_after - idle) / (total_after - total) if total_after > total else None,
        # How evenly the server's processes shared the work (1.0: one process did all of it).
        "busiest_process_share": max(used) / sum(used) if used and sum(used) > 0 else None,
    }


async def _at_concurrency(
    targets: dict[str, tuple[Target, int | None]], concurrency: int, variant: str, fake_pid: int | None
) -> dict[str, dict[str, Any]]:
    """LOAD_ROUNDS turns per target, the targets taking turns (a different one first each round)."""
    names = list(targets)
    pools = {name: Pool(targets[name][0], concurrency) for name in names}
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for pool in pools.values():
            await pool.open()
        for round_index in range(LOAD_ROUNDS):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                turns[name].append(
                    await _turn(pools[name], LOAD_SECONDS / LOAD_ROUNDS, targets[name][1], fake_pid)
                )
    finally:
        for pool in pools.values():
            await pool.aclose()
    rows = {}
    for name in names:
        merged = LoadResult(concurrency)
        for turn in turns[name]:
            merged.merge(turn["result"])
        row = merged.to_dict()
        served = max(1, merged.ok + merged.errors)
        if targets[name][1]:
            row["server_cpu_ms_per_request"] = round(sum(t["server_cpu_ms"] for t in turns[name]) / served, 2)
        row["db_cpu_ms_per_request"] = round(sum(t["db_cpu_ms"] for t in turns[name]) / served, 2)
        # What the rest of the machine spent per request: the same for every contender, so it flattens
        # their requests/s ratio (README: Performance).
        row["fake_cpu_ms_per_request"] = round(sum(t["fake_cpu_ms"] for t in turns[name]) / served, 2)
        row["generator_cpu_ms_per_request"] = round(
            sum(t["generator_cpu_ms"] for t in turns[name]) / served, 2
        )
        shares = [t["busiest_process_share"] for t in turns[name] if t["busiest_process_share"] is not None]
        row["busiest_process_cpu_share"] = [round(share, 2) for share in shares]
        row["machine_idle_share_by_turn"] = [
            round(t["machine_idle_share"], 2) for t in turns[name] if t["machine_idle_share"] is not None
        ]
        row["rps_by_turn"] = [
            round(t["result"].ok / t["result"].elapsed, 1) if t["result"].elapsed else 0.0
            for t in turns[name]
        ]
        if targets[name][1]:
            row["server_cpu_ms_per_request_by_turn"] = [
                round(t["server_cpu_ms"] / max(1, t["result"].ok + t["result"].errors), 2)
                for t in turns[name]
            ]
        procs.log(
            f"  {name} {variant} c={concurrency}: {row['rps']} req/s, {merged.errors} errors"
            + (f", busiest process's CPU share by turn {row['busiest_process_cpu_share']}" if shares else "")
            + f", machine idle by turn {row['machine_idle_share_by_turn']}"
            + (f" ({merged.first_error[:120]})" if merged.errors else "")
        )
        rows[name] = row
    return rows


def measure_http(
    targets: dict[str, tuple[Target, int | None]], variant: str, fake_pid: int | None = None
) -> dict[str, Any]:
    """req/s at each concurrency, the targets taking turns; then first tokens, also in turns."""
    names = list(targets)
    out: dict[str, Any] = {name: {"loads": []} for name in names}
    for concurrency in CONCURRENCY:
        rows = asyncio.run(_at_concurrency(targets, concurrency, variant, fake_pid))
        for name in names:
            out[name]["loads"].append(rows[name])
    firsts: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, int] = dict.fromkeys(names, 0)
    block = max(1, HTTP_TTFT_CALLS[variant] // 3)
    for _ in range(0, HTTP_TTFT_CALLS[variant], block):
        for name in names:
            samples, failed, first_error = asyncio.run(first_tokens(targets[name][0], calls=block, warmup=1))
            firsts[name] += samples
            errors[name] += failed
            out[name].setdefault("ttft_first_error", first_error)
    for name in names:
        out[name]["ttft"] = summary(firsts[name])
        out[name]["ttft_errors"] = errors[name]
        pid = targets[name][1]
        if pid:
            out[name]["peak_rss_mb"] = procs.peak_rss_mb(pid)
    return out


def start_ours(fake: procs.Server, variant: str) -> procs.Server:
    port = procs.free_port()
    argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "config.serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning"]
    argv += ["--workers", str(procs.web_workers())]  # as many as the proxy's (README: Scaling out)
    env = ours_env(fake.url + VARIANTS[variant])
    return procs.start(f"ours-uvicorn-{variant}", argv, env, port=port, health="/api/v1/health/", timeout=60)


def launch_proxy(fake: procs.Server) -> procs.Server:
    """Launched early: it takes 15-60 s to import, which overlaps the in-process contenders' own start-up
    (nothing is measured until it is ready; idle, it uses ~0.1% of a core)."""
    port = procs.free_port()
    config = procs.LOGS / "litellm-proxy.yaml"
    config.write_text(report.proxy_config(fake.url, VARIANTS, PROXY_MODELS, API_KEY, MASTER_KEY))
    argv = [str(procs.BENCH_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", str(procs.web_workers())]
    return procs.launch("litellm-proxy", argv, bench_env(), port=port)


def over_http(fake: procs.Server, proxy: procs.Server, token: str) -> dict[str, Any]:
    procs.log("HTTP: starting our server (uvicorn, one per fake variant)")
    servers: list[procs.Server] = []
    try:
        ours = {variant: start_ours(fake, variant) for variant in VARIANTS}
        servers += ours.values()
        results = {}
        for variant in VARIANTS:
            procs.log(f"HTTP, {variant} fake: fake direct, ours, LiteLLM proxy in turns")
            targets = {
                "fake": (fake_target(fake.url, variant), None),
                "ours": (ours_target(ours[variant].url, token), ours[variant].pid),
                "litellm_proxy": (proxy_target(proxy.url, variant), proxy.pid),
            }
            results[variant] = measure_http(targets, variant, fake.pid)
        return results
    finally:
        for server in servers:
            procs.stop(server)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    install_seconds = procs.ensure_bench_venv()
    fake = procs.start_fake()
    try:
        token = procs.run_json(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "bench.compare.ours", "setup"],
            ours_env(fake.url + "/v1"),
            name="ours-setup",
        )["token"]
        proxy = launch_proxy(fake)
        try:
            launched = time.perf_counter()
            ready: list[bool] = []

            def proxy_ready() -> None:
                if not ready:
                    procs.wait_ready(proxy, "/health/liveliness", timeout=240)
                    procs.log(f"  LiteLLM proxy up, {time.perf_counter() - launched:.1f} s after its launch")
                    ready.append(True)

            inproc = in_process(fake.url, proxy_ready)
            http = over_http(fake, proxy, token)
        finally:
            procs.stop(proxy)
    finally:
        procs.stop(fake)
    data = {
        "machine": {**procs.machine(), "loadavg_1m_at_start": load_before},
        "quick": QUICK,
        "settings": {
            "calls": CALLS,
            "stream_calls": STREAM_CALLS,
            "http_ttft_calls": HTTP_TTFT_CALLS,
            "concurrency": CONCURRENCY,
            "load_seconds": LOAD_SECONDS,
            "load_rounds": LOAD_ROUNDS,
            "load_max_requests": LOAD_MAX_REQUESTS,
        },
        "bench_venv_install_s": round(install_seconds, 1),
        "in_process": inproc,
        "http": http,
    }
    data["summary"] = report.summarize(data)
    data["total_s"] = round(time.perf_counter() - started, 1)
    report.write(data)
    procs.run_json([str(procs.bench_python()), "-m", "bench.compare.chart"], bench_env(), name="chart")
    print(report.markdown(data))


if __name__ == "__main__":
    main()
