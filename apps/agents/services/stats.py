"""Per-agent statistics, computed in the database (selectors: read-only).

One aggregate query for counts, tokens and cost, and one for the p50/p95 of execution time. Percentiles are
taken over completed runs (failed runs stop early or at a deadline and would distort "how long does it
take"), interpolated linearly between the two nearest ranks, as PostgreSQL's percentile_cont does, with the
same SQL on SQLite and PostgreSQL: `ORDER BY execution_time LIMIT 2 OFFSET k` walks the
(agent, status, execution_time) index instead of sorting every row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import Coalesce

from apps.agents.models import Agent, AgentExecution, ExecutionStatus

PERCENTILES = (0.5, 0.95)


@dataclass(frozen=True, slots=True)
class AgentStats:
    total: int
    completed: int
    failed: int
    cancelled: int
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


def agent_stats(agent: Agent) -> AgentStats:
    S = ExecutionStatus
    totals = AgentExecution.objects.filter(agent=agent).aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=S.COMPLETED)),
        failed=Count("id", filter=Q(status=S.FAILED)),
        cancelled=Count("id", filter=Q(status=S.CANCELLED)),
        running=Count("id", filter=Q(status=S.RUNNING)),
        pending=Count("id", filter=Q(status=S.PENDING)),
        timed=Count("execution_time", filter=Q(status=S.COMPLETED)),
        avg_time=Avg("execution_time", filter=Q(status=S.COMPLETED)),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost=Coalesce(Sum("cost"), Decimal("0")),
    )
    finished = totals["completed"] + totals["failed"] + totals["cancelled"]
    percentiles = _percentiles(agent, totals["timed"])
    return AgentStats(
        total=totals["total"],
        completed=totals["completed"],
        failed=totals["failed"],
        cancelled=totals["cancelled"],
        running=totals["running"],
        pending=totals["pending"],
        success_rate=round(totals["completed"] / finished, 4) if finished else None,
        avg_execution_time=totals["avg_time"],
        p50_execution_time=percentiles[0.5],
        p95_execution_time=percentiles[0.95],
        input_tokens=totals["input_tokens"],
        output_tokens=totals["output_tokens"],
        tokens_used=totals["input_tokens"] + totals["output_tokens"],
        cost=Decimal(totals["cost"]).quantize(Decimal("0.0000000001")),
    )
