"""Load held on PostgreSQL: N concurrent streamed runs against ONE uvicorn server process (issue 20).

    .venv/bin/python bench/load_streams.py                     # 500 streams, pool on (the shipped settings)
    .venv/bin/python bench/load_streams.py --streams 130 --no-pool  # before: a connection per open request
    .venv/bin/python bench/load_streams.py --streams 500 --deltas 60 --delta-ms 500

Each run is `POST /api/v1/agents/{id}/execute/` with `stream: true`; the agent's provider is the fake OpenAI
server (bench/compare/fake.py, its own process) streaming `--deltas` words, one every `--delta-ms` (default
60 x 500 ms: a 30 s stream). All streams start at once (the admission burst). Meanwhile one client samples
`GET /api/v1/health/` and another `GET /api/v1/agents/` back to back, every 250 ms, and this process samples
PostgreSQL's connections to the bench database (pg_stat_activity) and the server's RSS.

Measured: streams completed with every delta (and `execution.completed`), errors by status, health and GET
latency p50/p99/max over the whole run, the server's peak RSS, the most PostgreSQL connections in use.
PostgreSQL must allow at least 100 connections (`SHOW max_connections`; 100 is its default). Loopback only;
every process it starts is stopped at the end. Prints a table and writes bench/results/load_streams.json
(one entry per label and stream count, kept across runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _root import ROOT

from bench._django import RESULTS, setup

URL = setup("bench_load")

import httpx  # noqa: E402
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connections  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from apps.agents.models import Agent  # noqa: E402
from bench.api import LOGS, py_spy, server_env, summarize_profile  # noqa: E402
from bench.compare import procs  # noqa: E402

SAMPLE_SECONDS = 0.25


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prepare() -> str:
    user, _ = get_user_model().objects.get_or_create(username="bench-load")
    Agent.objects.update_or_create(
        agent_id="bench-load",
        defaults={
            "owner": user,
            "name": "Bench load",
            "preferred_platform": "openai",
            "model": "gpt-4o-mini",
            "max_retries": 0,
            "timeout_seconds": 600,
            "system_prompt": "You are terse.",
        },
    )
    return Token.objects.get_or_create(user=user)[0].key


def start_server(env: dict[str, str], workers: int) -> procs.Server:
    port = procs.free_port()
    argv = [
        str(ROOT / ".venv" / "bin" / "uvicorn"), "config.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
        "--workers", str(workers), "--backlog", "4096",
    ]  # fmt: skip
    return procs.start("load-streams-api", argv, env, port=port, health="/api/v1/health/", timeout=60)


async def one_stream(client: httpx.AsyncClient, token: str, deltas: int) -> dict[str, Any]:
    started = time.perf_counter()
    got = 0
    answered: float | None = None
    completed = False
    try:
        async with client.stream(
            "POST",
            "/api/v1/agents/bench-load/execute/",
            json={"input_data": {"task": "stream please"}, "stream": True},
            headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
        ) as response:
            answered = time.perf_counter()
            if response.status_code != 200:
                body = (await response.aread())[:200].decode(errors="replace")
                return {"status": str(response.status_code), "body": body, "deltas": 0, "answered": answered}
            async for line in response.aiter_lines():
                if line == "event: output.delta":
                    got += 1
                elif line == "event: execution.completed":
                    completed = True
                elif line in ("event: execution.failed", "event: execution.cancelled"):
                    return {"status": line.removeprefix("event: "), "deltas": got, "answered": answered}
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "deltas": got, "answered": answered}
    status = "200" if completed else "200 without execution.completed"
    seconds = time.perf_counter() - started
    return {"status": status, "deltas": got, "seconds": seconds, "full": got == deltas, "answered": answered}


async def sampler(base: str, path: str, headers: dict[str, str], stop: asyncio.Event) -> dict[str, Any]:
    """GET `path` every SAMPLE_SECONDS (or back to back when slower) until `stop`."""
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (start, ms)
    statuses: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                status = str((await client.get(path)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - began
            latencies.append(elapsed * 1000)
            timeline.append((began, elapsed * 1000))
            statuses[status] += 1
            await asyncio.sleep(max(0.0, SAMPLE_SECONDS - elapsed))
    return {
        "samples": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "statuses": dict(statuses),
        "timeline": timeline,
    }


async def watch_postgres(database: str, stop: asyncio.Event) -> dict[str, int]:
    """Most connections to `database` at once (this watcher's own excluded), and the most active ones."""
    most = most_active = 0
    async with await psycopg.AsyncConnection.connect(
        "host=127.0.0.1 user=postgres dbname=postgres", autocommit=True
    ) as conn:
        while not stop.is_set():
            row = await (
                await conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
            ).fetchone()
            assert row is not None
            most, most_active = max(most, row[0]), max(most_active, row[1])
            await asyncio.sleep(SAMPLE_SECONDS)
    return {"max_connections_used": most, "max_active": most_active}


def rss_mb(pid: int) -> float:
    total = 0
    for member in procs._tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


async def watch_rss(pid: int, stop: asyncio.Event) -> float:
    most = 0.0
    while not stop.is_set():
        most = max(most, rss_mb(pid))
        await asyncio.sleep(SAMPLE_SECONDS)
    return most


async def run_load(base: str, token: str, server_pid: int, database: str, args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    headers = {"Authorization": f"Token {token}"}
    watchers = [
        asyncio.create_task(sampler(base, "/api/v1/health/", {}, stop)),
        asyncio.create_task(sampler(base, "/api/v1/agents/", headers, stop)),
        asyncio.create_task(watch_postgres(database, stop)),
        asyncio.create_task(watch_rss(server_pid, stop)),
    ]
    await asyncio.sleep(1.0)  # a baseline before the burst
    cpu_before = {"server": procs.cpu_seconds(server_pid), "client": time.process_time()}
    postmaster = procs.postmaster_pid()
    cpu_before["postgres"] = procs.cpu_seconds(postmaster) if postmaster else 0.0
    limits = httpx.Limits(max_connections=args.streams + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=60, read=args.deltas * args.delta_ms / 1000 + 120, write=60, pool=120)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        results = await asyncio.gather(*(one_stream(client, token, args.deltas) for _ in range(args.streams)))
    wall = time.perf_counter() - began
    cpu = {
        "server": procs.cpu_seconds(server_pid) - cpu_before["server"],
        "client": time.process_time() - cpu_before["client"],
        "postgres": (procs.cpu_seconds(postmaster) - cpu_before["postgres"]) if postmaster else None,
    }
    await asyncio.sleep(1.0)
    stop.set()
    health, plain_get, postgres, peak_rss = await asyncio.gather(*watchers)
    full = [r for r in results if r["status"] == "200" and r.get("full")]
    # The admission burst: until the last stream got its answer's headers. Latencies after it are the
    # steady state of N open streams.
    admitted = max((r["answered"] for r in results if r.get("answered")), default=began)
    for sampled in (health, plain_get):
        timeline = sampled.pop("timeline")
        # When the slow answers came (seconds after the burst began), to tell the burst from the steady state.
        sampled["over_1s_at"] = [[round(at - began, 1), round(ms)] for at, ms in timeline if ms > 1000]
        after = [ms for at, ms in timeline if at >= admitted]
        sampled["after_admission"] = {
            "samples": len(after),
            "p50_ms": round(statistics.median(after), 1) if after else None,
            "p99_ms": round(percentile(after, 0.99), 1),
            "max_ms": round(max(after), 1) if after else None,
        }
    return {
        "streams": args.streams,
        "completed_with_every_delta": len(full),
        "outcomes": dict(Counter(r["status"] for r in results)),
        "first_error_body": next((r["body"] for r in results if r.get("body")), None),
        "stream_seconds_p50": round(statistics.median([r["seconds"] for r in full]), 2) if full else None,
        "stream_seconds_max": round(max(r["seconds"] for r in full), 2) if full else None,
        "wall_seconds": round(wall, 1),
        "admission_seconds": round(admitted - began, 1),
        "cpu_seconds": {k: round(v, 1) if v is not None else None for k, v in cpu.items()},
        "health": health,
        "get_agents": plain_get,
        **postgres,
        "server_rss_peak_mb": peak_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--deltas", type=int, default=60)
    parser.add_argument("--delta-ms", type=int, default=500)
    parser.add_argument("--no-pool", action="store_true", help="DB_POOL_MAX_SIZE=0: the behaviour before")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default: one process)")
    parser.add_argument("--label", default="", help="name of this run in the JSON (default: pool / no-pool)")
    parser.add_argument(
        "--profile", action="store_true", help="sample the server with py-spy (PY_SPY, or the bench venv's)"
    )
    args = parser.parse_args()
    if not 1 <= args.streams <= 2000:
        raise SystemExit("--streams must be between 1 and 2000")
    label = args.label or ("no-pool" if args.no_pool else "pool")
    database = URL.rsplit("/", 1)[1]

    token = prepare()
    connections.close_all()  # this process holds none during the run: pg_stat_activity counts the server
    fake = procs.start_fake()
    env = server_env(f"{fake.url}/stream/{args.deltas}x{args.delta_ms}/v1", URL)
    env.update({"THROTTLE_ANON_RATE": "10000000/min", "DJANGO_SETTINGS_MODULE": "config.settings"})
    if args.no_pool:
        env["DB_POOL_MAX_SIZE"] = "0"
    server = start_server(env, args.workers)
    raw = LOGS / "load-streams-profile.raw"
    spy = py_spy(server.pid, raw, gil=True) if args.profile else None
    try:
        row = asyncio.run(run_load(server.url, token, server.pid, database, args))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        procs.stop(server)
        procs.stop(fake)
    row = {
        "label": label,
        "workers": args.workers,
        "stream": f"{args.deltas} deltas x {args.delta_ms} ms",
        "pool": None if args.no_pool else settings.DATABASES["default"].get("OPTIONS", {}).get("pool"),
        "max_connections": subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW max_connections"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        **row,
    }
    print_table(row)
    if spy is not None:
        print()
        print(summarize_profile(raw.read_text()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "load_streams.json"
    runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    runs = [r for r in runs if (r["label"], r["streams"]) != (label, args.streams)] + [row]
    path.write_text(json.dumps({"benchmark": __doc__.splitlines()[0], "runs": runs}, indent=2) + "\n")
    print(f"\nwrote {path}")


def print_table(row: dict[str, Any]) -> None:
    health, get = row["health"], row["get_agents"]
    lines = [
        ("run", f"{row['label']}: {row['streams']} streams of {row['stream']}, {row['workers']} worker(s)"),
        ("completed with every delta", f"{row['completed_with_every_delta']} / {row['streams']}"),
        ("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(row["outcomes"].items()))),
        ("stream duration p50 / max", f"{row['stream_seconds_p50']} s / {row['stream_seconds_max']} s"),
        ("health p50 / p99 / max", f"{health['p50_ms']} / {health['p99_ms']} / {health['max_ms']} ms"),
        ("health statuses", ", ".join(f"{k}: {v}" for k, v in sorted(health["statuses"].items()))),
        ("GET agents p50 / p99 / max", f"{get['p50_ms']} / {get['p99_ms']} / {get['max_ms']} ms"),
        ("GET agents statuses", ", ".join(f"{k}: {v}" for k, v in sorted(get["statuses"].items()))),
        ("admission burst (all answered)", f"{row['admission_seconds']} s"),
        (
            "after it: health / GET p99",
            f"{health['after_admission']['p99_ms']} / {get['after_admission']['p99_ms']} ms "
            f"(max {health['after_admission']['max_ms']} / {get['after_admission']['max_ms']})",
        ),
        (
            "CPU s: server / PostgreSQL / client",
            " / ".join(str(row["cpu_seconds"][k]) for k in ("server", "postgres", "client")),
        ),
        ("PostgreSQL connections, most used", f"{row['max_connections_used']} of {row['max_connections']}"),
        ("server RSS, peak", f"{row['server_rss_peak_mb']} MB"),
        ("load average at end", str(row["load_average_at_end"])),
        ("health over 1 s at (s, ms)", str(health["over_1s_at"][:12])),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    if row.get("first_error_body"):
        print(f"first error body: {row['first_error_body']}")


if __name__ == "__main__":
    main()
