"""How long `agent_stats` takes on 10k, 100k and 1M executions (PostgreSQL by default).

    .venv/bin/python bench/stats.py            # DATABASE_URL overrides the bench database

Rows are spread over 10 agents (the realistic case) and, separately, the query is timed for one agent that
owns every row (the worst case); each before any rollup pass (every row read live) and after one (the pass's
own time too). Prints a table and writes bench/results/stats.json.
"""

from __future__ import annotations

import json
import statistics
import time

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, setup

URL = setup("bench_stats")

from django.db import connection  # noqa: E402

from apps.agents.models import (  # noqa: E402
    Agent,
    AgentExecution,
    AgentLatencyBucket,
    AgentStatsHour,
    StatsRollupState,
)
from apps.agents.services.stats import agent_stats  # noqa: E402
from apps.agents.services.stats_rollup import roll_up  # noqa: E402

SIZES = [10_000, 100_000, 1_000_000]
AGENTS = 10
REPEAT = 7


def fill(total: int, agents: list[Agent]) -> None:
    """Grow the table to `total` rows with one INSERT ... SELECT per agent (server-side, seconds not minutes)."""
    current = AgentExecution.objects.count()
    missing = total - current
    if missing <= 0:
        return
    table = AgentExecution._meta.db_table
    per_agent = missing // len(agents)
    with connection.cursor() as cursor:
        for agent in agents:
            cursor.execute(
                f"""
                INSERT INTO {table} (id, agent_id, agent_slug, status, mode, input_data, context, attempts,
                    metadata, error_code, error_message, platform_used, model_used, input_tokens, output_tokens,
                    cost, execution_time, request_hash, created_at, updated_at, started_at, finished_at,
                    redispatch_count)
                SELECT gen_random_uuid(), %s, %s,
                    (ARRAY['completed','completed','completed','completed','completed','completed',
                           'completed','failed','cancelled','failed'])[1 + (g %% 10)],
                    'sync', '{{}}', '{{}}', '[]', '{{}}', '', '', 'openai', 'gpt-4o-mini',
                    (g %% 500) + 10, (g %% 300) + 5, ((g %% 1000) + 1) * 0.0000001, random() * 5,
                    '', now() - (g || ' seconds')::interval, now(), now(), now(), 0
                FROM generate_series(1, %s) AS g
                """,
                [agent.pk, agent.agent_id, per_agent],
            )
        cursor.execute(f"ANALYZE {table}")


def timed(agent: Agent) -> tuple[float, float]:
    agent_stats(agent)  # warm caches and the plan
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        agent_stats(agent)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def unroll() -> None:
    """Forget every rollup, so the next agent_stats reads every row live (the figure before rollups)."""
    AgentStatsHour.objects.all().delete()
    AgentLatencyBucket.objects.all().delete()
    StatsRollupState.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {AgentExecution._meta.db_table} SET rollup_pass = NULL")
        cursor.execute(f"VACUUM ANALYZE {AgentExecution._meta.db_table}")


def measure(size: int, agents: int, rows_of_agent: int, agent: Agent) -> dict:
    unroll()
    live_p50, live_max = timed(agent)
    start = time.perf_counter()
    roll_up()
    rollup_s = time.perf_counter() - start
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {AgentExecution._meta.db_table}")
    p50, worst = timed(agent)
    return {
        "executions": size,
        "agents": agents,
        "rows_of_agent": rows_of_agent,
        "live_median_ms": round(live_p50, 2),
        "live_max_ms": round(live_max, 2),
        "rollup_pass_s": round(rollup_s, 2),
        "median_ms": round(p50, 2),
        "max_ms": round(worst, 2),
    }


def main() -> None:
    if connection.vendor != "postgresql":
        print("bench/stats.py fills tables with generate_series: run it on PostgreSQL")
        raise SystemExit(2)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {AgentExecution._meta.db_table} CASCADE")
    Agent.objects.filter(agent_id__startswith="bench-stats-").delete()
    agents = [Agent.objects.create(name=f"Bench {i}", agent_id=f"bench-stats-{i}") for i in range(AGENTS)]
    rows = []
    for size in SIZES:
        fill(size, agents)
        rows.append(measure(size, AGENTS, size // AGENTS, agents[0]))
    # Worst case: one agent owns all 1M rows.
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {AgentExecution._meta.db_table} SET agent_id = %s", [agents[0].pk])
    rows.append(measure(SIZES[-1], 1, SIZES[-1], agents[0]))

    print(f"agent_stats on {connection.vendor} ({REPEAT} runs each; 'live' = before any rollup pass)")
    print(
        f"{'executions':>12} {'agents':>7} {'rows/agent':>11} {'live p50 ms':>12} {'rollup s':>9} "
        f"{'p50 ms':>8} {'max ms':>8}"
    )
    for row in rows:
        print(
            f"{row['executions']:>12,} {row['agents']:>7} {row['rows_of_agent']:>11,} "
            f"{row['live_median_ms']:>12.1f} {row['rollup_pass_s']:>9.2f} {row['median_ms']:>8.1f} {row['max_ms']:>8.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stats.json").write_text(json.dumps({"database": connection.vendor, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
