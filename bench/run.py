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
4. Over HTTP, each server in its own process, loaded by an async httpx generator at concurrency 1, 16, 64
   (bounded in requests and seconds): the fake itself (the floor), our execute endpoint under uvicorn on
   PostgreSQL (DEBUG off, log level warning, token auth), the LiteLLM proxy (one worker, no database,
   master key auth).
5. Writes bench/results/latest.md, latest.json, latest.png (overhead and throughput) and prints the table.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import procs, report  # noqa: E402
from bench.compare.common import API_KEY, MESSAGES, MODEL, TASK, summary  # noqa: E402
from bench.compare.load import Target, first_tokens, load  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
VARIANTS = {"instant": "/v1", "50ms": "/slow50/v1"}
CALLS = {"instant": 40 if QUICK else 300, "50ms": 20 if QUICK else 100}
STREAM_CALLS = {"instant": 10 if QUICK else 100, "50ms": 5 if QUICK else 40}
HTTP_TTFT_CALLS = {"instant": 10 if QUICK else 60, "50ms": 5 if QUICK else 30}
CONCURRENCY = (1, 16, 64)
LOAD_SECONDS = 1.5 if QUICK else 4.0
LOAD_MAX_REQUESTS = 3000
MASTER_KEY = "sk-bench-master-0123456789abcdef0123456789abcdef"  # a local proxy's key, not a secret
BENCH_DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_compare")
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
        REDIS_URL="",
        # The per-user limits would refuse a load test; they are not what is measured.
        THROTTLE_USER_RATE="100000000/min",
        THROTTLE_EXECUTE_RATE="100000000/min",
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
def in_process(fake_url: str) -> dict[str, Any]:
    project, bench = str(ROOT / ".venv" / "bin" / "python"), str(procs.bench_python())
    results: dict[str, Any] = {}
    for variant, path in VARIANTS.items():
        base = fake_url + path
        sizes = ["--calls", str(CALLS[variant]), "--stream-calls", str(STREAM_CALLS[variant])]
        runs = {
            "floor_project": [project, "bench/compare/ours.py", "inprocess", "--contender", "openai"],
            "ours": [project, "bench/compare/ours.py", "inprocess", "--contender", "ours"],
            "floor_bench": [bench, "bench/compare/others.py", "openai"],
            "litellm": [bench, "bench/compare/others.py", "litellm"],
            "pydantic_ai": [bench, "bench/compare/others.py", "pydantic_ai"],
        }
        results[variant] = {}
        for name, argv in runs.items():
            procs.log(f"in-process {name} ({variant} fake)")
            env = ours_env(base) if argv[0] == project else bench_env()
            results[variant][name] = procs.run_json(
                [*argv, "--base-url", base, *sizes], env, name=f"{name}-{variant}"
            )
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


def measure_http(target: Target, variant: str, server_pid: int | None) -> dict[str, Any]:
    """req/s at each concurrency (with the server's and PostgreSQL's CPU per request), then first tokens."""
    postgres = procs.postmaster_pid()
    loads = []
    for concurrency in CONCURRENCY:
        cpu = procs.cpu_seconds(server_pid) if server_pid else 0.0
        db_cpu = procs.cpu_seconds(postgres) if postgres else 0.0
        result = asyncio.run(
            load(
                target,
                concurrency=concurrency,
                max_requests=LOAD_MAX_REQUESTS,
                duration=LOAD_SECONDS,
                warmup=3,
            )
        )
        row = result.to_dict()
        served = result.ok + result.errors + result.extra
        if server_pid:
            row["server_cpu_ms_per_request"] = round((procs.cpu_seconds(server_pid) - cpu) * 1000 / served, 2)
        if postgres:
            row["db_cpu_ms_per_request"] = round((procs.cpu_seconds(postgres) - db_cpu) * 1000 / served, 2)
        procs.log(
            f"  {target.name} {variant} c={concurrency}: {row['rps']} req/s, {result.errors} errors"
            + (f" ({result.first_error[:120]})" if result.errors else "")
        )
        loads.append(row)
    ttft, errors, first_error = asyncio.run(first_tokens(target, calls=HTTP_TTFT_CALLS[variant]))
    out: dict[str, Any] = {
        "loads": loads,
        "ttft": summary(ttft),
        "ttft_errors": errors,
        "ttft_first_error": first_error,
    }
    if server_pid:
        out["peak_rss_mb"] = procs.peak_rss_mb(server_pid)
    return out


def over_http(fake: procs.Server, token: str) -> dict[str, Any]:
    results: dict[str, Any] = {variant: {} for variant in VARIANTS}
    for variant in VARIANTS:
        procs.log(f"HTTP fake direct ({variant})")
        results[variant]["fake"] = measure_http(fake_target(fake.url, variant), variant, None)

    for variant, path in VARIANTS.items():
        port = procs.free_port()
        argv = [str(ROOT / ".venv" / "bin" / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        procs.log(f"HTTP ours under uvicorn ({variant} fake)")
        server = procs.start(
            f"ours-uvicorn-{variant}",
            argv,
            ours_env(fake.url + path),
            port=port,
            health="/api/v1/health/",
            timeout=60,
        )
        try:
            results[variant]["ours"] = measure_http(ours_target(server.url, token), variant, server.pid)
        finally:
            procs.stop(server)

    port = procs.free_port()
    config = procs.LOGS / "litellm-proxy.yaml"
    config.write_text(report.proxy_config(fake.url, VARIANTS, PROXY_MODELS, API_KEY, MASTER_KEY))
    argv = [str(procs.BENCH_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", "1"]
    procs.log("HTTP LiteLLM proxy (starting: it takes 15-60 s to import)")
    started = time.perf_counter()
    proxy = procs.start(
        "litellm-proxy", argv, bench_env(), port=port, health="/health/liveliness", timeout=240
    )
    procs.log(f"  proxy up after {time.perf_counter() - started:.1f} s")
    try:
        for variant in VARIANTS:
            results[variant]["litellm_proxy"] = measure_http(
                proxy_target(proxy.url, variant), variant, proxy.pid
            )
    finally:
        procs.stop(proxy)
    return results


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    install_seconds = procs.ensure_bench_venv()
    fake = procs.start_fake()
    try:
        token = procs.run_json(
            [str(ROOT / ".venv" / "bin" / "python"), "bench/compare/ours.py", "setup"],
            ours_env(fake.url + "/v1"),
            name="ours-setup",
        )["token"]
        inproc = in_process(fake.url)
        http = over_http(fake, token)
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
            "load_max_requests": LOAD_MAX_REQUESTS,
        },
        "bench_venv_install_s": round(install_seconds, 1),
        "in_process": inproc,
        "http": http,
    }
    data["summary"] = report.summarize(data)
    data["total_s"] = round(time.perf_counter() - started, 1)
    report.write(data)
    procs.run_json([str(procs.bench_python()), "bench/compare/chart.py"], bench_env(), name="chart")
    print(report.markdown(data))


if __name__ == "__main__":
    main()
