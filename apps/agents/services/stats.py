"""Per-agent statistics (selectors: read-only), exact and fast at any number of executions.

Counts, token and cost sums come from the hourly rollups (services/stats_rollup.py) of every execution a
rollup pass has counted, plus one live aggregate over the agent's rows no pass has counted yet (a partial
index): exact, and a few hundred hour rows instead of millions of executions.

Percentiles are taken over completed runs (failed runs stop early or at a deadline and would distort "how long
does it take"), interpolated linearly between the two nearest ranks, as PostgreSQL's percentile_cont does.
Up to EXACT_PERCENTILES_UP_TO completed runs they are exact: `ORDER BY execution_time LIMIT 2 OFFSET k` walks
the (agent, status, execution_time) index, the same SQL on SQLite and PostgreSQL. Beyond that the walk grows
with the offset (1.9 s for an agent with 1M runs), so they come from the rollups' latency histogram, within
stats_rollup.RELATIVE_ERROR (5.9 %) of the exact value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Sum

from apps.agents.models import (
    Agent,
    AgentExecution,
    AgentLatencyBucket,
    AgentStatsHour,
    ExecutionStatus,
    StatsRollupState,
)
from apps.agents.services.stats_rollup import COUNTED, bucket_midpoint, bucket_of, execution_totals

PERCENTILES = (0.5, 0.95)
EXACT_PERCENTILES_UP_TO = 20_000


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """An agent's runs, in total and by how they ended. The console's daily chart (console/selectors.py)
    counts with this too, so that its bars and the stats beside them agree."""

    total: int
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class AgentStats(OutcomeCounts):
    running: int
    pending: int
    success_rate: float | None  # completed / finished; None before any run finished
    avg_execution_time: float | None
    p50_execution_time: float | None
    p95_execution_time: float | None
    input_tokens: int
    output_tokens: int
    tokens_used: int
    cost: Decimal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interpolate(values: list[float], fraction: float) -> float:
    if len(values) == 1 or fraction == 0:
        return values[0]
    return values[0] + (values[1] - values[0]) * fraction


def _percentiles(agent: Agent, timed: int) -> dict[float, float | None]:
    if timed == 0:
        return dict.fromkeys(PERCENTILES)
    table = AgentExecution._meta.db_table
    positions = [p * (timed - 1) for p in PERCENTILES]
    select = (
        f"SELECT %s AS which, execution_time FROM (SELECT execution_time FROM {table} "
        "WHERE agent_id = %s AND status = %s AND execution_time IS NOT NULL "
        "ORDER BY execution_time LIMIT 2 OFFSET %s) AS q{n}"
    )
    sql = " UNION ALL ".join(select.replace("{n}", str(i)) for i in range(len(PERCENTILES)))
    params: list[Any] = []
    # The column's own representation: a UUID on PostgreSQL, 32 hex characters on SQLite.
    agent_key = AgentExecution._meta.get_field("agent").get_db_prep_value(agent.pk, connection)
    for i, position in enumerate(positions):
        params += [i, agent_key, ExecutionStatus.COMPLETED, math.floor(position)]
    rows: dict[int, list[float]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for which, value in cursor.fetchall():
            rows.setdefault(which, []).append(value)
    return {
        p: (_interpolate(sorted(rows[i]), position - math.floor(position)) if rows.get(i) else None)
        for i, (p, position) in enumerate(zip(PERCENTILES, positions, strict=True))
    }


def _percentiles_from_histogram(counts: dict[int, int], timed: int) -> dict[float, float | None]:
    ordered = sorted(counts.items())

    def at_rank(rank: int) -> float:
        seen = 0
        for bucket, count in ordered:
            seen += count
            if rank < seen:
                return bucket_midpoint(bucket)
        return bucket_midpoint(ordered[-1][0])

    result: dict[float, float | None] = {}
    for p in PERCENTILES:
        position = p * (timed - 1)
        low, high = at_rank(math.floor(position)), at_rank(math.ceil(position))
        result[p] = _interpolate([low, high], position - math.floor(position))
    return result


def _last_pass() -> int | None:
    return StatsRollupState.objects.filter(pk=1).values_list("last_pass", flat=True).first()


def _rolled(agent: Agent) -> tuple[dict[str, Any], dict[int, int]]:
    sums = AgentStatsHour.objects.filter(agent=agent).aggregate(**{name: Sum(name) for name in COUNTED})
    buckets = AgentLatencyBucket.objects.filter(agent=agent).values_list("bucket").annotate(n=Sum("count"))
    return sums, dict(buckets.order_by())


def _live(agent: Agent):
    return AgentExecution.objects.filter(agent=agent, rollup_pass__isnull=True)


def _live_totals(agent: Agent) -> dict[str, Any]:
    return _live(agent).aggregate(**execution_totals())


def _snapshot(agent: Agent) -> tuple[dict[str, Any], dict[str, Any], dict[int, int], list[float]]:
    """Rolled and live parts that agree: a pass committing between the two reads would move rows from one
    to the other (counted twice, or not at all), so the pass number is read before and after, and the reads
    start over if it moved."""
    for _ in range(5):
        before = _last_pass()
        rolled, buckets = _rolled(agent) if before else ({}, {})
        live = _live_totals(agent)
        times = []
        if live["timed"] + (rolled.get("timed") or 0) > EXACT_PERCENTILES_UP_TO:
            times = list(
                _live(agent)
                .filter(status=ExecutionStatus.COMPLETED, execution_time__isnull=False)
                .values_list("execution_time", flat=True)
            )
        if _last_pass() == before:
            break
    return rolled, live, buckets, times


def agent_stats(agent: Agent) -> AgentStats:
    rolled, live, buckets, live_times = _snapshot(agent)
    totals = {name: (live[name] or 0) + (rolled.get(name) or 0) for name in COUNTED}
    totals["cost"] = Decimal(live["cost"] or 0) + Decimal(rolled.get("cost") or 0)
    timed = totals["timed"]
    if timed <= EXACT_PERCENTILES_UP_TO:
        percentiles = _percentiles(agent, timed)
    else:
        for seconds in live_times:
            buckets[bucket_of(seconds)] = buckets.get(bucket_of(seconds), 0) + 1
        percentiles = _percentiles_from_histogram(buckets, timed)
    finished = totals["completed"] + totals["failed"] + totals["cancelled"]
    return AgentStats(
        total=totals["total"],
        completed=totals["completed"],
        failed=totals["failed"],
        cancelled=totals["cancelled"],
        running=totals["running"],
        pending=totals["pending"],
        success_rate=round(totals["completed"] / finished, 4) if finished else None,
        avg_execution_time=totals["time_sum"] / timed if timed else None,
        p50_execution_time=percentiles[0.5],
        p95_execution_time=percentiles[0.95],
        input_tokens=totals["input_tokens"],
        output_tokens=totals["output_tokens"],
        tokens_used=totals["input_tokens"] + totals["output_tokens"],
        cost=Decimal(totals["cost"]).quantize(Decimal("0.0000000001")),
    )
