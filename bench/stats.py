"""How long `agent_stats` takes on 10k, 100k and 1M executions (PostgreSQL by default).

    .venv/bin/python bench/stats.py            # DATABASE_URL overrides the bench database

Rows are spread over 10 agents (the realistic case) and, separately, the query is timed for one agent that
owns every row (the worst case). Prints a table and writes bench/results/stats.json.
"""

from __future__ import annotations

import json
import statistics
import time

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, setup

URL = setup("bench_stats")

from django.db import connection  # noqa: E402

from apps.agents.models import Agent, AgentExecution  # noqa: E402
from apps.agents.services.stats import agent_stats  # noqa: E402

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
                    cost, execution_time, request_hash, created_at, updated_at, started_at, finished_at)
                SELECT gen_random_uuid(), %s, %s,
                    (ARRAY['completed','completed','completed','completed','completed','completed',
                           'completed','failed','cancelled','failed'])[1 + (g %% 10)],
                    'sync', '{{}}', '{{}}', '[]', '{{}}', '', '', 'openai', 'gpt-4o-mini',
                    (g %% 500) + 10, (g %% 300) + 5, ((g %% 1000) + 1) * 0.0000001, random() * 5,
                    '', now() - (g || ' seconds')::interval, now(), now(), now()
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
        p50, worst = timed(agents[0])
        rows.append(
            {
                "executions": size,
                "agents": AGENTS,
                "rows_of_agent": size // AGENTS,
                "median_ms": round(p50, 2),
                "max_ms": round(worst, 2),
            }
        )
    # Worst case: one agent owns all 1M rows.
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {AgentExecution._meta.db_table} SET agent_id = %s", [agents[0].pk])
        cursor.execute(f"ANALYZE {AgentExecution._meta.db_table}")
    p50, worst = timed(agents[0])
    rows.append(
        {
            "executions": SIZES[-1],
            "agents": 1,
            "rows_of_agent": SIZES[-1],
            "median_ms": round(p50, 2),
            "max_ms": round(worst, 2),
        }
    )

    print(f"agent_stats on {connection.vendor} ({REPEAT} runs each)")
    print(f"{'executions':>12} {'agents':>7} {'rows/agent':>11} {'median ms':>10} {'max ms':>8}")
    for row in rows:
        print(
            f"{row['executions']:>12,} {row['agents']:>7} {row['rows_of_agent']:>11,} "
            f"{row['median_ms']:>10.1f} {row['max_ms']:>8.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stats.json").write_text(json.dumps({"database": connection.vendor, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
