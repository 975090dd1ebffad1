"""Two configurations of our HTTP server side by side: requests/s and CPU per run request, in alternating turns.

    .venv/bin/python bench/ab.py DB_ASYNC_WRITERS=0 -- DB_ASYNC_WRITERS=4
    .venv/bin/python bench/ab.py EXECUTE_ROUTE=false --            # B: the settings as shipped
    .venv/bin/python bench/ab.py @4c500a7 --                       # A: the code of another commit
    ROUNDS=10 TURN_SECONDS=2.5 CONCURRENCY=16 .venv/bin/python bench/ab.py ...

A change of the hot path is measured here before `make bench` (which takes six minutes and compares us with
LiteLLM): both servers run at once as `make bench` runs ours (`config.serve`, WEB_CONCURRENCY processes,
PostgreSQL, Redis, the fake provider answering at once), each given its own environment on top of that, and
the same load generator (bench/compare/load.py) loads them in turns, A then B then B then A..., so that the
machine's drift over the run falls on both. On this shared machine two runs of the same code differ by 10 %;
the ratio B/A of each round is the figure to read. Prints a table; writes bench/results/ab.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _root import ROOT

from bench import run
from bench.compare import procs
from bench.compare.load import Pool

ROUNDS = int(os.environ.get("ROUNDS", "10"))
SECONDS = float(os.environ.get("TURN_SECONDS", "2.5"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
OUT = ROOT / "bench" / "results" / "ab.json"


def parse(argv: list[str]) -> dict[str, dict[str, str]]:
    """`A1=x A2=y -- @rev B1=z`: each side's environment (either may be empty: the settings as shipped), and
    under REVISION the commit whose code it runs (`@rev`; this checkout's own code by default)."""
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    sides = {}
    for name, words in (("A", argv[:split]), ("B", argv[split + 1 :])):
        revisions = [word[1:] for word in words if word.startswith("@")]
        pairs = [word.split("=", 1) for word in words if not word.startswith("@")]
        if any(len(pair) != 2 for pair in pairs) or len(revisions) > 1:
            raise SystemExit(f"not NAME=value or one @revision: {words}")
        sides[name] = dict(pairs) | ({REVISION: revisions[0]} if revisions else {})
    return sides


REVISION = "REVISION"


def checkout(revision: str) -> Path:
    """A worktree of `revision` (made once, under bench/results/logs/, kept for the next run; `git worktree
    remove` it when done), run with this checkout's venv: the code before a change, beside the code after it.
    Both share the bench database, so the revision must have the same migrations."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = procs.LOGS / f"ab-{commit}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True)
    if (ROOT / ".env").exists():  # the SECRET_KEY `make bench` wrote (settings read .env from the checkout)
        shutil.copy(ROOT / ".env", path / ".env")
    return path


def start(name: str, fake: procs.Server, extra: dict[str, str]) -> procs.Server:
    port = procs.free_port()
    argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "config.serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--workers", str(procs.web_workers())]
    env = {**run.ours_env(fake.url + "/v1"), **extra}
    code = checkout(extra[REVISION]) if REVISION in extra else ROOT
    return procs.start(f"ab-{name}", argv, env, port=port, health="/api/v1/health/", timeout=60, cwd=code)


async def turns(
    servers: dict[str, procs.Server], token: str, fake_pid: int
) -> dict[str, list[dict[str, Any]]]:
    pools = {name: Pool(run.ours_target(server.url, token), CONCURRENCY) for name, server in servers.items()}
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        for pool in pools.values():
            await pool.open()
            await pool.run(max_requests=400, duration=1.5)  # warm: connections, caches, prepared statements
        names = list(servers)
        for index in range(ROUNDS):
            for name in names if index % 2 == 0 else names[::-1]:
                turn = await run._turn(pools[name], SECONDS, servers[name].pid, fake_pid)
                served = max(1, turn["result"].ok + turn["result"].errors)
                measured[name].append(
                    {
                        "rps": round(turn["result"].ok / turn["result"].elapsed, 1),
                        "errors": turn["result"].errors,
                        "server_cpu_ms": round(turn["server_cpu_ms"] / served, 3),
                        "db_cpu_ms": round(turn["db_cpu_ms"] / served, 3),
                        "machine_idle": round(turn["machine_idle_share"] or 0.0, 3),
                    }
                )
    finally:
        for pool in pools.values():
            await pool.aclose()
    return measured


def main() -> None:
    sides = parse(sys.argv[1:])
    fake = procs.start_fake()
    servers: dict[str, procs.Server] = {}
    try:
        setup = [str(ROOT / ".venv" / "bin" / "python"), "-m", "bench.compare.ours", "setup"]
        token = procs.run_json(setup, run.ours_env(fake.url + "/v1"), name="ab-setup")["token"]
        for name, extra in sides.items():
            servers[name] = start(name, fake, extra)
        measured = asyncio.run(turns(servers, token, fake.pid))
    finally:
        for server in servers.values():
            procs.stop(server)
        procs.stop(fake)
    ratios = [b["rps"] / a["rps"] for a, b in zip(measured["A"], measured["B"], strict=True) if a["rps"]]
    print(
        f"c={CONCURRENCY}, {ROUNDS} rounds of {SECONDS} s per side, {procs.web_workers()} server processes each"
    )
    print(
        "| side | environment | req/s mean (min-max) | server CPU ms/request | PostgreSQL ms | machine idle | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rows in measured.items():
        env = " ".join(f"{key}={value}" for key, value in sides[name].items()) or "as shipped"
        rps = [row["rps"] for row in rows]
        print(
            f"| {name} | {env} | {statistics.mean(rps):.0f} ({min(rps):.0f}-{max(rps):.0f}) "
            f"| {statistics.mean(r['server_cpu_ms'] for r in rows):.2f} "
            f"| {statistics.mean(r['db_cpu_ms'] for r in rows):.2f} "
            f"| {statistics.mean(r['machine_idle'] for r in rows):.0%} | {sum(r['errors'] for r in rows)} |"
        )
    print(
        f"\nB/A requests/s by round: mean {statistics.mean(ratios):.3f}, "
        + ", ".join(f"{r:.2f}" for r in ratios)
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": procs.machine(),
                "concurrency": CONCURRENCY,
                "rounds": ROUNDS,
                "seconds": SECONDS,
                "sides": sides,
                "turns": measured,
                "b_over_a_by_round": [round(r, 3) for r in ratios],
            },
            indent=2,
        )
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
