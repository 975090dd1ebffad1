"""Soak: background runs through several Celery workers while they are SIGKILLed at random. Does any run get
left behind (stuck), or call the provider twice?

    .venv/bin/python bench/soak.py [--broker redis|rabbitmq|both] [--runs 60] [--kills 20] [--workers 2]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_soak BENCH_REDIS_URL=redis://127.0.0.1:6379/7 \\
        BENCH_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672// .venv/bin/python bench/soak.py --broker both

PostgreSQL database `bench_soak` by default (created and migrated; DATABASE_URL overrides). Redis (events,
cancel notices, and the broker with `--broker redis`) under a key prefix of this run, RabbitMQ (`--broker
rabbitmq`) on the default vhost under queue names of this run; only this run's keys and queues are deleted.

What runs: `--workers` workers (`celery -A config worker`, prefork, `--concurrency` pool processes each, as
`make worker` runs them) and one `celery beat` scheduling the reaper every `--reaper-interval` seconds onto
the maintenance queue, which the workers consume too. The provider is the tests' fake OpenAI server, in this
process, streaming each answer over 0.5-3 s so that kills land mid-run; it records every request, so the
provider calls of each run are counted (each run's task text is unique). Runs are queued evenly over the
kill period. Every `--kill-every` seconds (randomly 0.5x-1.5x) a random worker is SIGKILLed: its whole
process group (then a replacement is started) or, at random, one of its pool processes (its main process
forks a new one). The workers keep production's CELERY_VISIBILITY_TIMEOUT (2 h), so on Redis a killed
worker's messages never come back within the soak by themselves; heartbeats, staleness and the re-dispatch
threshold are shortened (`--redispatch-after`).

After the last kill the soak waits up to `--settle` seconds for every row to be terminal, then reports per
broker: runs, kills, completed, worker_lost, other failures, stuck (not terminal by then), re-sent rows,
maximum provider calls per run, and the time from the first run queued to the last row terminal. Target: 0
stuck and at most one provider call per run. Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, setup

URL = setup("bench_soak")

import kombu  # noqa: E402
import kombu.pools  # noqa: E402
import redis  # noqa: E402
from asgiref.sync import async_to_sync  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db.models import Max, Sum  # noqa: E402

from apps.agents.models import TERMINAL_STATUSES, Agent, AgentExecution, ExecutionStatus  # noqa: E402
from apps.agents.services import background  # noqa: E402
from apps.agents.services.execution_engine import execution_engine  # noqa: E402
from config.celery import app as celery_app  # noqa: E402
from tests.agents.background.workers import WorkerFactory, WorkerProcess  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402
from tests.fakes.server import Reply  # noqa: E402

KEY = "sk-bench-not-a-secret"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TASK_PREFIX = "soak-run"


class SlowOpenAI(FakeOpenAIServer):
    """Every answer streams 10 words 0.05-0.3 s apart (a run of 0.5-3 s)."""

    def next_reply(self) -> Reply:
        words = " ".join(f"w{i}" for i in range(10))
        return Reply(text=words, chunk_delay=random.uniform(0.05, 0.3))


def provider_calls(fake: SlowOpenAI) -> Counter[str]:
    """Chat requests per run, keyed by the run's task text (in the last user message)."""
    calls: Counter[str] = Counter()
    for request in list(fake.requests):
        body = request.body if isinstance(request.body, dict) else {}
        for message in body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str) and TASK_PREFIX in content:
                start = content.index(TASK_PREFIX)
                calls[content[start:].split()[0]] += 1
                break
    return calls


def configure_producer(broker: str, prefix: str, queues: dict[str, str]) -> str:
    """This process is the API server: it queues to the workers' broker and reads nothing else."""
    url = REDIS_URL if broker == "redis" else RABBITMQ_URL
    os.environ["CELERY_BROKER_URL"] = url  # Celery reads it before its configuration
    settings.CELERY_BROKER_URL = url
    settings.REDIS_URL = REDIS_URL
    settings.REDIS_KEY_PREFIX = prefix
    for key, value in queues.items():
        setattr(settings, key, value)
    options = dict(celery_app.conf.broker_transport_options)
    celery_app.conf.update(broker_url=url, broker_transport_options={**options, "global_keyprefix": prefix})
    # kombu keeps pools per connection in process-wide groups that a later lookup for an equal broker
    # would find: close and forget them all.
    kombu.pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    return url


class Soak:
    def __init__(self, args: argparse.Namespace, broker: str, fake: SlowOpenAI, agent: Agent, user: Any):
        self.args, self.broker, self.fake, self.agent, self.user = args, broker, fake, agent, user
        self.prefix = f"bench-soak-{uuid.uuid4().hex[:8]}:"
        self.queues = {"RUNS_QUEUE": f"{self.prefix}runs", "MAINTENANCE_QUEUE": f"{self.prefix}maintenance"}
        self.url = configure_producer(broker, self.prefix, self.queues)
        env = {
            "OPENAI_BASE_URL": fake.url + "/v1",
            "OPENAI_API_KEY": KEY,
            "PLATFORM_FALLBACK_ORDER": "openai",
            "PLATFORM_REQUEST_TIMEOUT": "30",
            "LOG_LEVEL": "INFO",
            "EXECUTION_HEARTBEAT_SECONDS": "1",
            "EXECUTION_STALE_SECONDS": "5",
            "PENDING_REDISPATCH_SECONDS": str(args.redispatch_after),
            "REAPER_INTERVAL_SECONDS": str(args.reaper_interval),
            **self.queues,
        }
        self.factory = WorkerFactory(
            redis_url=REDIS_URL,
            broker_url=self.url,
            prefix=self.prefix,
            log_dir=Path(tempfile.mkdtemp(prefix="bench-soak-")),
            env=env,
        )
        self.workers: list[WorkerProcess] = []
        self.lock = threading.Lock()
        self.kills = Counter[str]()
        self.ids: list[str] = []

    def start_worker(self) -> None:
        worker = self.factory.start(concurrency=self.args.concurrency)
        with self.lock:
            self.workers.append(worker)

    def queue_runs(self, spread: float) -> None:
        gap = spread / self.args.runs
        for i in range(self.args.runs):
            task = f"{TASK_PREFIX}-{i}-{uuid.uuid4().hex[:8]}"
            execution = async_to_sync(execution_engine.create_pending)(self.agent, {"task": task}, self.user)
            background._send(str(execution.pk))
            self.ids.append(str(execution.pk))
            time.sleep(gap)

    def kill_one(self, replacements: list[threading.Thread]) -> None:
        with self.lock:
            alive = [w for w in self.workers if w.process.poll() is None]
        if not alive:
            return
        victim = random.choice(alive)
        children = victim.pool_processes()
        if children and random.random() < 0.5:
            with contextlib.suppress(ProcessLookupError):
                os.kill(random.choice(children), signal.SIGKILL)
            self.kills["pool_process"] += 1
            return
        victim.kill()
        with self.lock:
            self.workers.remove(victim)
        self.kills["worker"] += 1
        thread = threading.Thread(target=self.start_worker, daemon=True)
        thread.start()
        replacements.append(thread)

    def rows(self):
        return AgentExecution.objects.filter(pk__in=self.ids)

    def run(self) -> dict[str, Any]:
        args = self.args
        for _ in range(args.workers):
            self.start_worker()
        beat = self.factory.start_beat()
        spread = args.kills * args.kill_every
        started = time.time()
        producer = threading.Thread(target=self.queue_runs, args=(spread,), daemon=True)
        producer.start()
        replacements: list[threading.Thread] = []
        while sum(self.kills.values()) < args.kills:
            time.sleep(args.kill_every * random.uniform(0.5, 1.5))
            self.kill_one(replacements)
        producer.join()
        for thread in replacements:
            thread.join(120)
        last_kill = time.time()
        while time.time() - last_kill < args.settle:
            if self.rows().exclude(status__in=TERMINAL_STATUSES).count() == 0:
                break
            time.sleep(0.5)
        beat.stop()
        self.factory.stop_all()
        return self.report(started, time.time() - started)

    def report(self, started: float, wall: float) -> dict[str, Any]:
        rows = self.rows()
        statuses = Counter(rows.values_list("status", flat=True))
        errors = Counter(rows.filter(status=ExecutionStatus.FAILED).values_list("error_code", flat=True))
        calls = provider_calls(self.fake)
        tasks = [row["input_data"]["task"] for row in rows.values("input_data")]
        per_run = [calls.get(task, 0) for task in tasks]
        last = rows.filter(status__in=TERMINAL_STATUSES).aggregate(last=Max("finished_at"))["last"]
        redispatched = rows.filter(redispatch_count__gt=0)
        stuck = [
            {"id": str(row["pk"]), "status": row["status"], "redispatch_count": row["redispatch_count"]}
            for row in rows.exclude(status__in=TERMINAL_STATUSES).values("pk", "status", "redispatch_count")
        ]
        return {
            "broker": self.broker,
            "runs": len(tasks),
            "kills": sum(self.kills.values()),
            "kills_by_kind": dict(self.kills),
            "completed": statuses.get(ExecutionStatus.COMPLETED, 0),
            "worker_lost": errors.get("worker_lost", 0),
            "other_failed": sum(n for code, n in errors.items() if code != "worker_lost"),
            "other_failures": {code: n for code, n in errors.items() if code != "worker_lost"},
            "stuck": len(stuck),
            "stuck_rows": stuck,
            "redispatched_rows": redispatched.count(),
            "redispatches": redispatched.aggregate(n=Sum("redispatch_count"))["n"] or 0,
            "max_provider_calls_per_run": max(per_run, default=0),
            "runs_with_more_than_one_call": sum(n > 1 for n in per_run),
            "provider_calls": sum(per_run),
            "seconds_until_last_terminal": (last.timestamp() - started) if last else None,
            "wall_seconds": wall,
        }

    def cleanup(self) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        if self.broker == "rabbitmq":
            with kombu.Connection(RABBITMQ_URL, connect_timeout=5) as connection:
                for queue in self.queues.values():
                    channel = connection.channel()
                    with contextlib.suppress(*connection.channel_errors):
                        channel.queue_delete(queue)
                    with contextlib.suppress(Exception):
                        channel.close()


def soak_agent() -> tuple[Agent, Any]:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-soak")
    agent, _ = Agent.objects.update_or_create(
        agent_id="bench-soak",
        defaults={
            "owner": user,
            "name": "soak",
            "preferred_platform": "openai",
            "max_retries": 0,
            "system_prompt": "You are terse.",
        },
    )
    return agent, user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between kills")
    parser.add_argument("--redispatch-after", type=float, default=10.0, help="PENDING_REDISPATCH_SECONDS")
    parser.add_argument("--reaper-interval", type=float, default=2.0, help="REAPER_INTERVAL_SECONDS")
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait after the last kill")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    random.seed(args.seed)

    fake = SlowOpenAI().start()
    agent, user = soak_agent()
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    results = {}
    try:
        for broker in brokers:
            fake.reset()
            AgentExecution.objects.filter(agent=agent).delete()
            soak = Soak(args, broker, fake, agent, user)
            try:
                results[broker] = soak.run()
            finally:
                soak.factory.stop_all()
                soak.cleanup()
                AgentExecution.objects.filter(agent=agent).delete()
    finally:
        fake.stop()

    database = "postgresql" if URL.startswith("postgres") else "sqlite"
    print(
        f"\nSoak: {args.runs} background runs, {args.workers} workers x {args.concurrency} pool processes, "
        f"SIGKILL every ~{args.kill_every} s ({database}, {os.cpu_count()} cores)\n"
    )
    columns = [
        ("runs", "runs"),
        ("kills", "kills"),
        ("completed", "completed"),
        ("worker_lost", "worker_lost"),
        ("other failed", "other_failed"),
        ("stuck", "stuck"),
        ("re-sent", "redispatched_rows"),
        ("max calls/run", "max_provider_calls_per_run"),
        ("last terminal (s)", "seconds_until_last_terminal"),
    ]
    print(f"{'broker':<10}" + "".join(f"{label:>14}" for label, _ in columns[:-1]) + f"{columns[-1][0]:>19}")
    for broker, row in results.items():
        cells = [f"{row[key]:>14}" for _, key in columns[:-1]]
        last = row["seconds_until_last_terminal"]
        print(f"{broker:<10}" + "".join(cells) + (f"{last:>19.1f}" if last is not None else f"{'-':>19}"))
    for broker, row in results.items():
        print(f"  {broker}: kills {row['kills_by_kind']}, other failures {row['other_failures'] or 'none'}")
    payload = {
        "benchmark": "soak",
        "database": database,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "settings": vars(args),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'soak.json'}")
    if any(row["stuck"] or row["max_provider_calls_per_run"] > 1 for row in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
