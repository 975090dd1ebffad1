"""Requests/s and p50/p95 latency of POST /api/v1/agents/{id}/execute/ at concurrency 1, 16 and 64.

    .venv/bin/python bench/api.py                       # PostgreSQL database bench_api (DATABASE_URL overrides)
    .venv/bin/python bench/api.py --requests 300 --profile

The API runs as `uvicorn config.asgi:application` in its own process (one worker, as `make run`), the fake
OpenAI server (bench/compare/fake.py, answers at once) in another, and this process is the client (httpx,
keep-alive connections, one per concurrent client). Every request is a real run: token auth, throttling,
validation, a row inserted `running`, the provider call through the OpenAI SDK, the final UPDATE.

Database connection setups measured side by side (`--variants`):
- "no-pool": DB_POOL_MAX_SIZE=0 (under ASGI each request's ORM work runs in a thread of its own, so each
  request opens a connection and closes it at the end);
- "persistent": no pool, CONN_MAX_AGE=60 (the connections of finished request threads linger until collected);
- "pool": the settings as shipped, psycopg's pool (DB_POOL_*; README: Scaling out).

`--profile` samples the server with py-spy (from the bench venv, made by `make bench`, or PY_SPY=path) during
one run at `--profile-concurrency` (default 1) and prints where its time goes: by package (self time) and the hottest frames of this
project and the libraries it calls (inclusive). Prints a table and writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, ROOT, setup, start_fake_provider
from bench.compare import procs
from bench.compare.common import percentile

URL = setup("bench_api")

import httpx  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from apps.agents.models import Agent, AgentExecution  # noqa: E402

CONCURRENCY = (1, 16, 64)
BODY = {"input_data": {"task": "Say hello"}}
# py-spy from the bench venv, or any other (PY_SPY=/path/to/py-spy): never installed into the project venv.
PY_SPY = Path(os.environ.get("PY_SPY") or ROOT / ".venv-bench" / "bin" / "py-spy")
LOGS = RESULTS / "logs"  # the servers' own output (errors under overload land here, not on the table)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(provider_url: str, db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "OPENAI_API_KEY": "sk-bench-not-a-secret",
        "OPENAI_BASE_URL": provider_url,
        "PLATFORM_FALLBACK_ORDER": "openai",
        "LOCAL_ENABLED": "false",
        "ANTHROPIC_API_KEY": "",
        "GEMINI_API_KEY": "",
        "CELERY_BROKER_URL": "",
        # BENCH_REDIS_URL: the server with Redis (shared rate limits and caches, as several processes need).
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", ""),
        # The bench measures the endpoint, not the rate limiter's refusals. BENCH_THROTTLE_RATE="" turns the
        # two limits off (no rate-limit count at all: what counting costs, with or without Redis).
        "THROTTLE_USER_RATE": os.environ.get("BENCH_THROTTLE_RATE", "10000000/min"),
        "THROTTLE_EXECUTE_RATE": os.environ.get("BENCH_THROTTLE_RATE", "10000000/min"),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        # Plain HTTP on 127.0.0.1, as `make run`: no redirect to HTTPS (settings' production default).
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        str(ROOT / ".venv" / "bin" / "uvicorn"),
        "config.asgi:application",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--no-access-log",
        "--log-level", "warning",
    ]  # fmt: skip
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / "api-server.log").open("ab")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/health/", timeout=2).status_code in (200, 503):
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API server did not start")


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def prepare() -> tuple[str, str]:
    user, _ = get_user_model().objects.get_or_create(username="bench-api")
    Agent.objects.update_or_create(
        agent_id="bench-api",
        defaults={
            "owner": user,
            "name": "Bench API",
            "preferred_platform": "openai",
            "model": "gpt-4o-mini",
            "max_retries": 0,
            "system_prompt": "You are terse.",
        },
    )
    token, _ = Token.objects.get_or_create(user=user)
    return token.key, "/api/v1/agents/bench-api/execute/"


async def load(base: str, path: str, token: str, concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    first_failure = ""
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal remaining, failures, first_failure
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=BODY)
                except httpx.HTTPError as exc:
                    failures += 1
                    first_failure = first_failure or f"{type(exc).__name__}: {exc}"
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1
                    first_failure = first_failure or f"{response.status_code} {response.text[:300]}"

        # Warm-up: connections opened, SDK client built, caches filled.
        for _ in range(min(concurrency, 8)):
            await client.post(path, json=BODY)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "failures": failures,
        "requests_per_s": len(ms) / elapsed,  # successful or not, answered requests only
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 95),
        "first_failure": first_failure,
    }


def variant_env(variant: str) -> dict[str, str]:
    """pool: the default settings (psycopg pool, DB_POOL_*); no-pool: a connection per request;
    persistent: no pool, CONN_MAX_AGE=60."""
    if variant == "no-pool":
        return {"DJANGO_SETTINGS_MODULE": "config.settings", "DB_POOL_MAX_SIZE": "0"}
    if variant == "persistent":
        return {"DJANGO_SETTINGS_MODULE": "config.settings", "DB_POOL_MAX_SIZE": "0", "CONN_MAX_AGE": "60"}
    return {"DJANGO_SETTINGS_MODULE": "config.settings"}


def available(variant: str) -> bool:
    if variant != "pool":
        return True
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        print("pool: skipped, psycopg_pool is not installed (.venv/bin/pip install psycopg-pool)")
        return False
    return True


def run_variant(variant: str, provider_url: str, token: str, path: str, total: int) -> list[dict[str, float]]:
    api, base = start_api({**server_env(provider_url, URL), **variant_env(variant)})
    rows = []
    postmaster = procs.postmaster_pid()
    try:
        for concurrency in CONCURRENCY:
            cpu = procs.cpu_seconds(api.pid), procs.cpu_seconds(postmaster) if postmaster else 0.0
            row = asyncio.run(load(base, path, token, concurrency, max(total, concurrency * 10)))
            # CPU per answered request: the server process, and every PostgreSQL process (other databases'
            # work on a shared machine included, so an upper bound).
            answered = max(1, row["requests"])
            row["server_cpu_ms"] = (procs.cpu_seconds(api.pid) - cpu[0]) * 1000 / answered
            row["postgres_cpu_ms"] = (
                (procs.cpu_seconds(postmaster) - cpu[1]) * 1000 / answered if postmaster else None
            )
            rows.append({"database": variant, **row})
            print(
                f"{variant:<11} c={concurrency:<3} {row['requests_per_s']:8.1f} req/s  "
                f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                f"CPU/request server {row['server_cpu_ms']:5.1f} ms PG {row['postgres_cpu_ms'] or 0:5.1f} ms  "
                f"failures {row['failures']} {row['first_failure'][:200]}",
                flush=True,
            )
    finally:
        stop(api)
    return rows


# First match wins: specific packages before their parents.
BUCKETS = [
    ("psycopg (PostgreSQL driver, incl. waiting for the server)", ("psycopg",)),
    ("django ORM / db", ("django/db/",)),
    ("DRF (auth, throttle, parse, serializers, render)", ("rest_framework/",)),
    ("django (request, middleware, urls, signals)", ("django/",)),
    ("asgiref (sync_to_async thread hops)", ("asgiref/",)),
    ("openai SDK + pydantic", ("openai/", "pydantic")),
    ("httpx / httpcore (client to provider)", ("httpx", "httpcore", "h11/", "anyio/")),
    ("uvicorn / httptools (server)", ("uvicorn/", "httptools")),
    ("this project (apps/)", ("apps/",)),
    ("asyncio / threads / stdlib", ("asyncio/", "concurrent/", "threading.py", "queue.py", "selectors.py")),
]
# Frames where a thread sits waiting for work: not time spent on a request.
IDLE = ("_worker (concurrent/futures/thread.py:81)", "Runner.run (", "EpollSelector.select", "Condition.wait")


def bucket_of(frame: str) -> str:
    for name, needles in BUCKETS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def summarize_profile(raw: str) -> str:
    """py-spy's collapsed stacks -> share of busy samples by package (self) and by frame (inclusive)."""
    by_bucket: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    busy = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the thread's name
        if not frames or frames[-1].startswith(IDLE):
            continue
        samples = int(count)
        busy += samples
        by_bucket[bucket_of(frames[-1])] = by_bucket.get(bucket_of(frames[-1]), 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    lines = [f"server samples: {busy} (py-spy, 200 Hz, the thread holding the GIL, idle waits left out)", ""]
    lines.append("by package (self time):")
    for name, samples in sorted(by_bucket.items(), key=lambda item: -item[1]):
        lines.append(f"  {samples / busy * 100:5.1f}%  {name}")
    lines += ["", "hottest frames of the request path (inclusive):"]
    wanted = ("apps/", "rest_framework/", "openai/", "django/db/", "psycopg/", "asgiref/", "django/core/")
    shown = 0
    for frame, samples in sorted(inclusive.items(), key=lambda item: -item[1]):
        if any(needle in frame for needle in wanted) and shown < 40:
            lines.append(f"  {samples / busy * 100:5.1f}%  {frame}")
            shown += 1
    return "\n".join(lines)


def py_spy(pid: int, raw: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (200 Hz) into `raw` until SIGINT: every thread, or with `gil` only the thread
    holding the GIL (where the process's Python CPU goes, without threads waiting on locks or the GIL)."""
    if not PY_SPY.exists():
        raise SystemExit(
            f"--profile needs py-spy: {PY_SPY} (run `make bench` once to create the bench venv, or set PY_SPY)"
        )
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "-p", str(pid), "-o", str(raw), "-f", "raw", "-r", "200", "-t"]
        + (["--gil"] if gil else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    return spy


def profile_run(provider_url: str, token: str, path: str, total: int, concurrency: int) -> str:
    raw = LOGS / "api-profile.raw"
    api, base = start_api({**server_env(provider_url, URL), **variant_env("pool")})
    try:
        asyncio.run(load(base, path, token, 4, 40))  # warm-up: imports, first connections, caches
        spy = py_spy(api.pid, raw, gil=True)
        asyncio.run(load(base, path, token, concurrency, total))
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    finally:
        stop(api)
    return summarize_profile(raw.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--requests", type=int, default=400, help="requests per concurrency level (at least 10 x c)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the server (py-spy)")
    parser.add_argument("--profile-concurrency", type=int, default=1, help="concurrency of the profiled run")
    parser.add_argument("--variants", default="no-pool,persistent,pool", help='comma-separated; "" for none')
    args = parser.parse_args()

    token, path = prepare()
    provider, provider_url = start_fake_provider()
    rows: list[dict[str, float]] = []
    try:
        for variant in filter(available, filter(None, args.variants.split(","))):
            rows += run_variant(variant, provider_url, token, path, args.requests)
        profile = (
            profile_run(provider_url, token, path, args.requests, args.profile_concurrency)
            if args.profile
            else None
        )
    finally:
        stop(provider)

    print()
    print(
        f"{'database':<11} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms':>7} {'PG ms':>6} "
        f"{'fail':>5}"
    )
    for row in rows:
        print(
            f"{row['database']:<11} {row['concurrency']:>4} {row['requests_per_s']:>8.1f} "
            f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['server_cpu_ms']:>7.1f} "
            f"{row['postgres_cpu_ms'] or 0:>6.1f} {row['failures']:>5}"
        )
    if profile:
        print()
        print(profile)
    result = {
        "benchmark": "POST /api/v1/agents/{id}/execute/ (uvicorn, 1 worker; fake OpenAI answering at once)",
        "database": URL.split("@")[-1],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_end": os.getloadavg(),
        "executions_in_db": AgentExecution.objects.count(),
        "rows": rows,
        "profile": profile.splitlines() if profile else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS / 'api.json'}")


if __name__ == "__main__":
    main()
