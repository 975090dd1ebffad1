"""The engine's own overhead per run: `execution_engine.execute_agent` (and `execute_streaming`) against a fake
OpenAI server that answers instantly, minus a direct `openai` SDK call to the same server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_engine .venv/bin/python bench/engine.py [--runs 400]
    .venv/bin/python bench/engine.py --profile      # cProfile of the engine path, top functions by own time
                                                    # (PROFILE_SORT=cumtime: by cumulative time)

The database is created and migrated if missing (PostgreSQL by default; DATABASE_URL overrides it). The fake
server (bench/compare/fake.py: the tests' FakeOpenAIServer on uvloop + httptools) runs in its own process so
that it does not share this process's GIL. Direct and engine calls
alternate, so drift on a noisy machine hits both alike. Each engine run is a real run: a row inserted
`running`, the provider call, one final UPDATE with attempts, tokens and cost.
"(2 writes alone)" times just those two writes (StateManager create + complete) for scale, and "(2 writes,
raw SQL)" the same two statements hand-written. "budget vs none" pairs a sync run under a
USD + token budget with the same run under none: its overhead is the spend control's (one reservation and
one settlement per attempt); "+slots vs none" adds a concurrency limit (a slot taken and freed per run);
"(hold+settle alone)" times one attempt's reservation and settlement by themselves. "first_token" times a streamed run up
to its first text (the rest of the stream is read afterwards, untimed): what a streaming client waits. On
PostgreSQL everything is measured twice (--as-configured: once; --modes sync,first_token,...: only those):
as configured, then with synchronous_commit=off (a commit no longer waits for the disk's fsync; at most the
last few hundred ms of commits can be lost if PostgreSQL itself crashes, never corrupted). The modes take
turns run by run, so that a variant and its comparison see the same load. Prints a table and writes
bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import statistics
import time
import uuid
from decimal import Decimal
from typing import Any

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, setup, start_fake_provider
from bench.compare.common import percentile

URL = setup("bench_engine")

import openai  # noqa: E402

from apps.agents.models import Agent, AgentExecution  # noqa: E402
from apps.agents.services.execution_engine import execution_engine  # noqa: E402
from apps.agents.services.state_manager import state_manager  # noqa: E402
from apps.platforms.openai import OpenAIPlatform  # noqa: E402
from apps.platforms.pricing import Pricing  # noqa: E402
from apps.platforms.registry import PlatformRegistry, set_registry  # noqa: E402

KEY = "sk-bench-not-a-secret"
LABELS = {
    "db_writes": "(2 writes alone)",
    "db_writes_raw": "(2 writes, raw SQL)",
    "budget": "budget vs none",  # "direct" = the same engine run with no budget
    "budget_slots": "+slots vs none",
    "budget_writes": "(hold+settle alone)",
}


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 95), "mean_ms": statistics.fmean(ms)}


def budgeted_users() -> tuple[object, object]:
    """Two more users: one under a USD + token budget, one whose budget also limits concurrent runs (each
    run then also takes and frees a slot). Limits far above what the bench spends: every run is admitted."""
    from decimal import Decimal

    from django.contrib.auth import get_user_model

    from apps.agents.models import Budget, BudgetUsage

    users = []
    for name, concurrent in (("bench-engine-budget", None), ("bench-engine-budget-slots", 8)):
        user, _ = get_user_model().objects.get_or_create(username=name)
        Budget.objects.filter(user=user).delete()
        Budget.objects.create(
            scope="user",
            user=user,
            period="month",
            limit_usd=Decimal("1000000"),
            limit_tokens=10**12,
            max_concurrent=concurrent,
        )
        users.append(user)
    BudgetUsage.objects.filter(budget__user__in=users).delete()
    return users[0], users[1]


def prepare_agent() -> tuple[Agent, object]:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-engine")
    agent, _ = Agent.objects.update_or_create(
        agent_id="bench-engine",
        defaults={
            "owner": user,
            "name": "Bench engine",
            "preferred_platform": "openai",
            "model": "gpt-4o-mini",
            "system_prompt": "You are a helpful assistant.",
        },
    )
    return agent, user


async def set_synchronous_commit(value: str) -> None:
    """Set synchronous_commit on the connection the async ORM uses (its one thread-sensitive thread)."""
    from asgiref.sync import sync_to_async
    from django.db import connection

    def apply() -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET synchronous_commit TO {value}")

    await sync_to_async(apply)()


_rest: list[object] = []


def first_token_seen(stream: object) -> None:
    """The first-token modes stop timing at the first text; the rest of the stream is read afterwards,
    outside the timed span (`drain_rest`), so the run ends and records itself as usual."""
    _rest.append(stream)


async def drain_rest() -> None:
    while _rest:
        stream = _rest.pop()
        async for _ in stream:  # type: ignore[attr-defined]
            pass


def raw_insert(pk: object, agent_id: object, user_id: object, now: Any) -> None:
    """The INSERT of a running row in hand-written SQL (a unit: the connection goes back to the pool after)."""
    import json
    from datetime import timedelta

    from django.db import connection

    from apps.agents.services.db import release_connection

    deadline = (now, now, now + timedelta(seconds=150))  # started_at, heartbeat_at, deadline_at
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO agents_agentexecution (id, created_at, updated_at, agent_id, agent_slug, user_id,"
                " status, mode, input_data, context, error_code, error_message, platform_used, model_used,"
                " attempts, input_tokens, output_tokens, cost, started_at, heartbeat_at, deadline_at,"
                " redispatch_count, request_hash, metadata) VALUES (%s, %s, %s, %s, %s, %s, 'running', 'sync',"
                " %s, '{}', '', '', '', '', '[]', 0, 0, 0, %s, %s, %s, 0, '', '{}')",
                [
                    pk,
                    now,
                    now,
                    agent_id,
                    "bench-engine",
                    user_id,
                    json.dumps({"task": "Say hello"}),
                    *deadline,
                ],
            )
    finally:
        release_connection()


def raw_update(pk: object, started: Any) -> None:
    """The final conditional UPDATE of a completed run in hand-written SQL, with what StateManager writes
    (JSON as text, a Decimal cost), as a unit."""
    import json

    from django.db import connection
    from django.utils import timezone

    from apps.agents.services.db import release_connection

    attempts = [{"platform": "openai", "model": "gpt-4o-mini", "status": "ok", "latency_ms": 1.0}]
    end = timezone.now()
    rest = (json.dumps({"finish_reason": "stop"}), (end - started).total_seconds(), end, end, pk)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE agents_agentexecution SET status = 'completed', output = %s, input_tokens = %s,"
                " output_tokens = %s, cost = %s, platform_used = %s, model_used = %s, attempts = %s,"
                " metadata = %s, execution_time = %s, error_code = '', error_message = '', updated_at = %s,"
                " finished_at = %s WHERE id = %s AND status IN ('running') AND cancel_requested_at IS NULL",
                [
                    json.dumps("hi"),
                    11,
                    7,
                    Decimal("0.000006"),
                    "openai",
                    "gpt-4o-mini",
                    json.dumps(attempts),
                    *rest,
                ],
            )
            assert cursor.rowcount == 1
    finally:
        release_connection()


async def measure(
    base_url: str, agent: Agent, user: object, runs: int, warmup: int, modes: frozenset[str] = frozenset()
) -> dict[str, object]:
    from asgiref.sync import sync_to_async
    from django.db import connection

    client = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=30)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello"},
    ]

    async def direct_sync() -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0.3)

    async def open_direct_stream() -> Any:
        return await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            temperature=0.3,
            stream=True,
            stream_options={"include_usage": True},
        )

    async def direct_stream() -> None:
        async for _ in await open_direct_stream():
            pass

    async def direct_first_token() -> None:
        # Timed to the first text; the rest is read afterwards, untimed (the connection goes back to the
        # pool only at the stream's end).
        stream = await open_direct_stream()
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                return first_token_seen(stream)

    async def engine_first_token() -> None:
        events = execution_engine.execute_streaming(agent, {"task": "Say hello"}, user)
        async for event in events:
            if event.name == "output.delta":
                return first_token_seen(events)

    async def engine_sync() -> None:
        result = await execution_engine.execute_agent(agent, {"task": "Say hello"}, user)
        assert result.success, result.error

    async def engine_stream() -> None:
        last = None
        async for last in execution_engine.execute_streaming(agent, {"task": "Say hello"}, user):  # noqa: B007
            pass
        assert last is not None and last.name == "execution.completed", last

    budget_user, slots_user = await asyncio.to_thread(budgeted_users)

    async def engine_budget() -> None:
        result = await execution_engine.execute_agent(agent, {"task": "Say hello"}, budget_user)
        assert result.success, result.error

    async def engine_budget_slots() -> None:
        result = await execution_engine.execute_agent(agent, {"task": "Say hello"}, slots_user)
        assert result.success, result.error

    from apps.agents.engine.spend import AttemptSpec
    from apps.agents.services.budgets import applicable_budgets, guard_for
    from apps.platforms.base import Usage
    from apps.platforms.registry import get_registry

    budgets = await asyncio.to_thread(applicable_budgets, user=budget_user, agent=agent)
    spec = AttemptSpec("openai", "gpt-4o-mini", 60, 256)

    async def budget_writes() -> None:
        # One attempt's reservation and settlement alone, as the engine makes them: the hold, then the
        # settlement (noted, no I/O) written by the run's close (two thread hops, two round trips).
        guard = guard_for(execution_id=None, budgets=budgets, registry=get_registry())
        assert guard is not None
        reserved = await guard.reserve(spec)
        await guard.settle(reserved, Usage(11, 7), Decimal("0.0000060000"))
        await guard.close()

    async def db_writes() -> None:
        # The two writes every sync run makes, alone: the INSERT (already running) and the final UPDATE.
        execution = await state_manager.acreate_execution(
            agent=agent, input_data={"task": "Say hello"}, user=user, running=True
        )
        await state_manager.acomplete_execution(execution, output="hi", tokens_in=11, tokens_out=7)

    insert_raw, update_raw = sync_to_async(raw_insert), sync_to_async(raw_update)

    async def db_writes_raw() -> None:
        # The same two writes as hand-written SQL, one hop each like StateManager's: what its statements cost
        # on top of the database's work.
        from django.utils import timezone

        pk, now = uuid.uuid4(), timezone.now()
        await insert_raw(pk, agent.pk, user.pk, now)
        await update_raw(pk, now)

    async def nothing() -> None:
        return None

    pairs = [
        ("sync", direct_sync, engine_sync),
        ("stream", direct_stream, engine_stream),
        ("first_token", direct_first_token, engine_first_token),
        ("db_writes", nothing, db_writes),
        ("db_writes_raw", nothing, db_writes_raw),
        # Spend control: the same sync run with a budget active, paired with a run with none (the "direct"
        # column is then the engine without a budget): the difference is the reservation + settlement.
        ("budget", engine_sync, engine_budget),
        ("budget_slots", engine_sync, engine_budget_slots),
        ("budget_writes", nothing, budget_writes),
    ]
    pairs = [pair for pair in pairs if not modes or pair[0] in modes]
    if connection.vendor != "postgresql":  # the hand-written statements are PostgreSQL's (UUID, jsonb)
        pairs = [pair for pair in pairs if pair[0] != "db_writes_raw"]
    for _ in range(warmup):
        for _, direct, engine in pairs:
            for call in (direct, engine):
                await call()
                await drain_rest()
    times: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode, _, _ in pairs}
    # CPU time of this process (all threads, so the ORM's thread too): steadier than wall time when the
    # machine is busy, and what the engine really costs a server.
    cpu_used: dict[str, list[float]] = {mode: [0.0, 0.0] for mode, _, _ in pairs}
    # Round robin over the modes, so that a variant and the one it is compared with (the two writes and
    # their raw SQL) see the same load on a busy machine, not one the first minute and the other the next.
    for _ in range(runs):
        for mode, direct, engine in pairs:
            for side, call in enumerate((direct, engine)):
                cpu, started = time.process_time(), time.perf_counter()
                await call()
                times[mode][side].append(time.perf_counter() - started)
                cpu_used[mode][side] += time.process_time() - cpu
                await drain_rest()
    results: dict[str, object] = {}
    for mode, (direct_times, engine_times) in times.items():
        direct_stats, engine_stats = summary(direct_times), summary(engine_times)
        paired = [e - d for e, d in zip(engine_times, direct_times, strict=True)]
        direct_cpu, engine_cpu = cpu_used[mode]
        results[mode] = {
            "direct_sdk": direct_stats,
            "engine": engine_stats,
            "overhead_p50_ms": engine_stats["p50_ms"] - direct_stats["p50_ms"],
            "overhead_p95_ms": engine_stats["p95_ms"] - direct_stats["p95_ms"],
            "paired_difference": summary(paired),
            "cpu_ms_per_run": {"direct_sdk": direct_cpu / runs * 1000, "engine": engine_cpu / runs * 1000},
        }
    await client.close()
    return results


async def measure_all(
    base_url: str,
    agent: Agent,
    user: object,
    runs: int,
    warmup: int,
    postgres: bool,
    modes: frozenset[str] = frozenset(),
    as_configured_only: bool = False,
) -> dict[str, object]:
    """As configured; on PostgreSQL also with synchronous_commit=off, where a commit does not wait for the
    WAL flush (the disk's fsync), which is most of a write's cost on these machines."""
    results = {"as_configured": await measure(base_url, agent, user, runs, warmup, modes)}
    if postgres and not as_configured_only:
        await set_synchronous_commit("off")
        results["synchronous_commit_off"] = await measure(base_url, agent, user, runs, warmup, modes)
    return results


async def profile(agent: Agent, user: object, runs: int) -> None:
    for _ in range(20):
        await execution_engine.execute_agent(agent, {"task": "Say hello"}, user)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        await execution_engine.execute_agent(agent, {"task": "Say hello"}, user)
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "tottime"))
    stats.print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of engine runs instead")
    parser.add_argument("--modes", default="", help="comma-separated modes to run (default: all)")
    parser.add_argument(
        "--as-configured", action="store_true", help="skip the synchronous_commit=off pass on PostgreSQL"
    )
    args = parser.parse_args()
    modes = frozenset(filter(None, args.modes.split(",")))

    server, base_url = start_fake_provider()
    try:
        registry = PlatformRegistry(
            {
                "openai": OpenAIPlatform(
                    api_key=KEY, base_url=base_url, default_model="gpt-4o-mini", timeout=30
                )
            },
            fallback_order=("openai",),
            pricing=Pricing(),
        )
        set_registry(registry)
        agent, user = prepare_agent()
        if args.profile:
            asyncio.run(profile(agent, user, args.runs))
            return
        database = "postgresql" if URL.startswith("postgres") else "sqlite"
        results = asyncio.run(
            measure_all(
                base_url,
                agent,
                user,
                args.runs,
                args.warmup,
                database == "postgresql",
                modes,
                args.as_configured,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    AgentExecution.objects.filter(agent=agent).delete()

    print(f"\nEngine overhead per run ({args.runs} runs each, {database}, fake OpenAI answering instantly)\n")
    header = f"{'commits':<24}{'mode':<22}{'direct p50':>12}{'engine p50':>12}{'overhead p50':>14}"
    header += f"{'direct p95':>12}{'engine p95':>12}{'overhead p95':>14}{'CPU +/run':>11}"
    print(header)
    print("-" * len(header))
    for commits, table in results.items():
        assert isinstance(table, dict)
        for mode, row in table.items():
            direct, engine = row["direct_sdk"], row["engine"]
            label = LABELS.get(mode, mode)
            print(
                f"{commits:<24}{label:<22}{direct['p50_ms']:>9.2f} ms{engine['p50_ms']:>9.2f} ms"
                f"{row['overhead_p50_ms']:>11.2f} ms{direct['p95_ms']:>9.2f} ms{engine['p95_ms']:>9.2f} ms"
                f"{row['overhead_p95_ms']:>11.2f} ms"
                f"{row['cpu_ms_per_run']['engine'] - row['cpu_ms_per_run']['direct_sdk']:>8.2f} ms"
            )
    payload = {
        "benchmark": "engine_overhead",
        "database": database,
        "runs": args.runs,
        "warmup": args.warmup,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "target_overhead_p50_ms": 5.0,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; wrote {RESULTS / 'engine.json'}")


if __name__ == "__main__":
    main()
