"""CPU of a thread hop, and of Django's request floor through config.asgi with and without the connection
checks at a request's start (config/asgi.py skips them when no connection outlives a request).

    SECRET_KEY=x .venv/bin/python bench/hops.py [--calls 5000] [--rounds 3]

In one process on uvloop, as the server runs: CPU microseconds per call (process time, all threads), rounds
alternating. Prints a table and writes bench/results/hops.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

os.environ.setdefault("SECURE_SSL_REDIRECT", "false")  # a plain-HTTP 404, not a redirect

import uvloop
from asgiref.sync import sync_to_async
from django.core import signals

from bench._django import RESULTS
from config import asgi

SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
    "path": "/no-such-page/", "raw_path": b"/no-such-page/", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
}  # fmt: skip


def nothing() -> int:
    return 1


async def cpu_us(calls: int, one) -> float:  # type: ignore[no-untyped-def]
    await one()
    start = time.process_time()
    for _ in range(calls):
        await one()
    return (time.process_time() - start) / calls * 1e6


async def request_404() -> None:
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client never goes away
        return {}

    async def send(message: dict[str, object]) -> None:
        return None

    await asgi.application(SCOPE, receive, send)


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    hop = sync_to_async(nothing)
    out: dict[str, list[float]] = {
        name: [] for name in ("asgiref", "executor", "404 as shipped", "404 checks")
    }

    async def asgiref_hop() -> None:
        async with asgi.LentThreadContext(asgi.PooledThreadsASGIHandler.threads):  # a request's, as served
            await hop()

    async def executor_hop() -> None:
        await loop.run_in_executor(executor, contextvars.copy_context().run, nothing)

    for _ in range(rounds):
        out["asgiref"].append(await cpu_us(calls, asgiref_hop))
        out["executor"].append(await cpu_us(calls, executor_hop))
        out["404 as shipped"].append(await cpu_us(calls, request_404))
        for receiver in asgi.CONNECTION_CHECKS:  # Django's own wiring: the checks for every sender
            signals.request_started.connect(receiver)
        out["404 checks"].append(await cpu_us(calls, request_404))
        for receiver in asgi.CONNECTION_CHECKS:  # back to config.asgi's: for the WSGI handler only
            signals.request_started.disconnect(receiver)
    executor.shutdown()
    return out


def main() -> None:
    logging.getLogger("django.request").setLevel(logging.ERROR)  # not a "Not Found" line per call
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out = uvloop.run(measure(args.calls, args.rounds))
    labels = {
        "asgiref": "thread hop, asgiref sync_to_async (as Django and our db units)",
        "executor": "thread hop, bare loop.run_in_executor",
        "404 as shipped": "Django 404 through config.asgi, as shipped",
        "404 checks": "the same with request_started's connection checks (a hop)",
    }
    print(f"{'CPU us per call, median [min-max] of rounds':<64} {'':>20}")
    for name, values in out.items():
        print(f"{labels[name]:<64} {statistics.median(values):>7.0f} [{min(values):.0f}-{max(values):.0f}]")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hops.json").write_text(json.dumps({"calls": args.calls, "cpu_us": out}, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'hops.json'}")


if __name__ == "__main__":
    main()
