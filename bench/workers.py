"""Background runs on real Celery workers: throughput with 1 and 2 workers, the latency the queue adds, and
how fast a cancel from another process stops a run.

    .venv/bin/python bench/workers.py [--runs 300] [--latency-runs 60] [--concurrency 1]
    DATABASE_URL=sqlite:////tmp/bench-workers.sqlite3 .venv/bin/python bench/workers.py   # SQLite instead

PostgreSQL database `bench_workers` by default (created and migrated), Redis db 7 at 127.0.0.1:6379 under a
key prefix of this run (BENCH_REDIS_URL overrides; only this run's keys are deleted). The provider is the
tests' fake OpenAI server on uvloop in its own process (bench/compare/fake.py), answering at once, so what
is measured is the queue, the worker and the database, not a model. Workers are `celery -A config worker`
processes (prefork pool, `--concurrency` pool processes each, as `make worker` runs them, logging at
WARNING) started with the same environment a deployment would give them.

- throughput: `--runs` pending rows are created, then all their tasks are sent at once; runs/s = runs / (last
  finished_at - first send).
- latency: one run at a time: enqueue -> the `execution.completed` event read from the events bus (what an
  SSE client of GET /executions/{id}/events/ waits for), against the same run done in-process with
  `execute_streaming` (background runs stream from the provider too); "added by the queue" is the difference.
  Pickup = enqueue -> the worker's `started_at`.
- cancel: a run whose provider never answers (an in-process fake Anthropic server with a `hang` fault); the
  time from `request_cancel` in this process to the row being `cancelled` by the worker.

Prints a table and writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from contextlib import aclosing
from pathlib import Path
from typing import Any

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, setup, start_fake_provider
from bench.compare.common import percentile

URL = setup("bench_workers")

import redis  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.agents.models import Agent, AgentExecution, ExecutionStatus  # noqa: E402
from apps.agents.services import background  # noqa: E402
from apps.agents.services.events_bus import subscribe  # noqa: E402
from apps.agents.services.execution_engine import execution_engine  # noqa: E402
from apps.platforms.openai import OpenAIPlatform  # noqa: E402
from apps.platforms.pricing import Pricing  # noqa: E402
from apps.platforms.registry import PlatformRegistry, set_registry  # noqa: E402
from config.celery import app as celery_app  # noqa: E402
from tests.agents.background.workers import WorkerFactory  # noqa: E402
from tests.fakes.anthropic_server import FakeAnthropicServer  # noqa: E402
from tests.fakes.server import Fault  # noqa: E402

KEY = "sk-bench-not-a-secret"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
PREFIX = f"bench-workers-{uuid.uuid4().hex[:8]}:"


def ms(values: list[float]) -> dict[str, float]:
    scaled = [v * 1000 for v in values]
    return {"p50_ms": statistics.median(scaled), "p95_ms": percentile(scaled, 95), "n": len(scaled)}


def configure_producer() -> None:
    """This process is the API server: it queues to the workers' broker and reads their events."""
    settings.CELERY_BROKER_URL = REDIS_URL
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_KEY_PREFIX = PREFIX
    options = dict(celery_app.conf.broker_transport_options)
    celery_app.conf.update(
        broker_url=REDIS_URL, broker_transport_options={**options, "global_keyprefix": PREFIX}
    )


def agents() -> tuple[Agent, Agent, Any]:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-workers")
    common = {"owner": user, "max_retries": 0, "system_prompt": "You are terse."}
    fast, _ = Agent.objects.update_or_create(
        agent_id="bench-workers", defaults={**common, "name": "bench", "preferred_platform": "openai"}
    )
    stuck, _ = Agent.objects.update_or_create(
        agent_id="bench-workers-hang", defaults={**common, "name": "hang", "preferred_platform": "anthropic"}
    )
    return fast, stuck, user


async def wait_until(predicate, limit: float = 300.0, every: float = 0.01) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise RuntimeError("condition not reached in time")


async def throughput(agent: Agent, user: Any, runs: int) -> dict[str, Any]:
    rows = [await execution_engine.create_pending(agent, {"task": f"t{i}"}, user) for i in range(runs)]
    ids = [str(row.pk) for row in rows]
    started = time.time()
    for execution_id in ids:
        await sync_to_async(background._send)(execution_id)
    sent = time.time() - started
    done = AgentExecution.objects.filter(pk__in=ids, status__in=("completed", "failed", "cancelled"))

    async def all_done() -> bool:
        return await done.acount() == runs

    await wait_until(all_done, every=0.05)
    finished = [
        row async for row in AgentExecution.objects.filter(pk__in=ids).values("status", "finished_at")
    ]
    elapsed = max(row["finished_at"].timestamp() for row in finished) - started
    completed = sum(row["status"] == ExecutionStatus.COMPLETED for row in finished)
    return {
        "runs": runs,
        "completed": completed,
        "seconds": elapsed,
        "runs_per_s": runs / elapsed,
        "send_s": sent,
    }


async def background_latency(agent: Agent, user: Any, runs: int) -> dict[str, Any]:
    end_to_end, pickup = [], []
    for i in range(runs):
        started = time.time()
        execution = await execution_engine.create_pending(agent, {"task": f"l{i}"}, user)
        await background.aenqueue_execution(execution)
        async with aclosing(subscribe(str(execution.pk), 0, poll_seconds=0.5)) as events:
            async for event in events:
                if event.is_terminal:
                    assert event.name == "execution.completed", event
        end_to_end.append(time.time() - started)
        row = await AgentExecution.objects.aget(pk=execution.pk)
        pickup.append(row.started_at.timestamp() - started)
    return {"end_to_end": ms(end_to_end), "pickup": ms(pickup)}


async def in_process_latency(agent: Agent, user: Any, runs: int) -> dict[str, Any]:
    samples = []
    for i in range(runs):
        started = time.time()
        async with aclosing(execution_engine.execute_streaming(agent, {"task": f"s{i}"}, user)) as events:
            async for event in events:
                last = event
        assert last.name == "execution.completed"
        samples.append(time.time() - started)
    return ms(samples)


async def _status(execution_id: Any) -> str:
    return await AgentExecution.objects.filter(pk=execution_id).values_list("status", flat=True).aget()


async def one_cancel(agent: Agent, user: Any, fake: FakeAnthropicServer) -> float:
    fake.reset()
    fake.fail(Fault("hang"))
    execution = await execution_engine.create_pending(agent, {"task": "never answered"}, user)
    await background.aenqueue_execution(execution)

    async def hanging() -> bool:
        return bool(fake.requests) and await _status(execution.pk) == ExecutionStatus.RUNNING

    await wait_until(hanging)
    asked = time.time()
    assert await background.request_cancel(execution.pk)

    async def cancelled() -> bool:
        return await _status(execution.pk) == ExecutionStatus.CANCELLED

    await wait_until(cancelled, every=0.005)
    row = await AgentExecution.objects.aget(pk=execution.pk)
    return row.finished_at.timestamp() - asked


async def cancel_latency(agent: Agent, user: Any, fake: FakeAnthropicServer, runs: int) -> dict[str, Any]:
    return ms([await one_cancel(agent, user, fake) for _ in range(runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per throughput measurement")
    parser.add_argument("--latency-runs", type=int, default=60)
    parser.add_argument("--cancel-runs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes per worker")
    args = parser.parse_args()

    configure_producer()
    fake_process, base_url = start_fake_provider()
    anthropic = FakeAnthropicServer().start()
    set_registry(
        PlatformRegistry(
            {
                "openai": OpenAIPlatform(
                    api_key=KEY, base_url=base_url, default_model="gpt-4o-mini", timeout=30
                )
            },
            fallback_order=("openai",),
            pricing=Pricing(),
        )
    )
    fast, stuck, user = agents()
    worker_env = {
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": anthropic.url,
        "ANTHROPIC_API_KEY": KEY,
        "PLATFORM_FALLBACK_ORDER": "openai,anthropic",
        "LOG_LEVEL": "WARNING",
    }
    factory = WorkerFactory(
        redis_url=REDIS_URL,
        prefix=PREFIX,
        log_dir=Path(tempfile.mkdtemp(prefix="bench-workers-")),
        env=worker_env,
    )
    results: dict[str, Any] = {"throughput": {}}
    try:
        for count in (1, 2):
            workers = [factory.start(concurrency=args.concurrency) for _ in range(count)]
            asyncio.run(throughput(fast, user, 20))  # warm up: connections, first-run imports
            results["throughput"][f"{count}_workers"] = asyncio.run(throughput(fast, user, args.runs))
            if count == 1:
                results["latency"] = {
                    "in_process_stream": asyncio.run(in_process_latency(fast, user, args.latency_runs)),
                    "background": asyncio.run(background_latency(fast, user, args.latency_runs)),
                }
                results["cancel"] = asyncio.run(cancel_latency(stuck, user, anthropic, args.cancel_runs))
            for worker in workers:
                worker.stop()
    finally:
        factory.stop_all()
        fake_process.terminate()
        fake_process.wait(timeout=10)
        anthropic.stop()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
        AgentExecution.objects.filter(agent__in=[fast, stuck]).delete()

    database = "postgresql" if URL.startswith("postgres") else "sqlite"
    latency = results["latency"]
    added = {
        q: latency["background"]["end_to_end"][q] - latency["in_process_stream"][q]
        for q in ("p50_ms", "p95_ms")
    }
    results["latency"]["added_by_queue"] = added
    print(
        f"\nBackground runs on Celery workers ({database}, Redis, fake OpenAI answering at once, "
        f"{os.cpu_count()} cores, {args.concurrency} pool process(es) per worker)\n"
    )
    print(f"{'workers':<10}{'runs':>6}{'seconds':>10}{'runs/s':>10}")
    for name, row in results["throughput"].items():
        print(f"{name.split('_')[0]:<10}{row['runs']:>6}{row['seconds']:>10.2f}{row['runs_per_s']:>10.1f}")
    print(f"\n{'latency (1 worker, one run at a time)':<52}{'p50':>10}{'p95':>10}")
    lines = [
        ("in-process execute_streaming (no queue)", latency["in_process_stream"]),
        ("background: enqueue -> execution.completed event", latency["background"]["end_to_end"]),
        ("  of which enqueue -> worker started the run", latency["background"]["pickup"]),
        ("added by the queue", added),
        ("cancel from another process -> row cancelled", results["cancel"]),
    ]
    for label, row in lines:
        print(f"{label:<52}{row['p50_ms']:>7.1f} ms{row['p95_ms']:>7.1f} ms")
    payload = {
        "benchmark": "background_workers",
        "database": database,
        "cpu_count": os.cpu_count(),
        "pool_processes_per_worker": args.concurrency,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'workers.json'}")


if __name__ == "__main__":
    main()
