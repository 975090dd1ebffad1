"""Per-agent hourly rollups of finished executions, so that stats never scan an agent's whole history.

A periodic pass (celery beat, the in-process runner, or `manage.py rollup_stats`) takes the next pass number,
stamps it on every terminal execution not yet counted (`rollup_pass IS NULL`), and adds exactly those rows
to AgentStatsHour (exact counts, token and cost sums, the sum of execution times) and AgentLatencyBucket (a
histogram of completed runs' execution times in fixed log-spaced buckets), all in one transaction. The rows
are chosen by the stamp, not by a time window, so a row that commits late is counted by the next pass instead
of being missed, and a terminal row never changes again, so what was counted stays true. The stats selector
adds the rows without a stamp live (a partial index), so totals are exact whether a pass ran a second or a
day ago; only the speed of the stats query depends on it.

Passes are serialised by their first statement, the UPDATE that takes the next pass number: a second pass
waits for the first to commit, then finds nothing left to stamp.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, F, FloatField, Q, Sum, Value
from django.db.models.functions import Coalesce, Floor, Greatest, Least, Ln, TruncHour
from django.utils import timezone

from apps.agents.models import (
    TERMINAL_STATUSES,
    AgentExecution,
    AgentLatencyBucket,
    AgentStatsHour,
    ExecutionStatus,
    StatsRollupState,
)

logger = logging.getLogger(__name__)

# Twenty buckets per decade: bucket b holds times in [10^(b/20), 10^((b+1)/20)) seconds. A percentile read
# from the histogram is the bucket's geometric midpoint, within 10^(1/40) - 1 = 5.9 % of the true value for
# times between 1 ms and 10^5 s (times outside are clamped to those bounds).
BUCKETS_PER_DECADE = 20
MIN_SECONDS = 1e-3
MAX_SECONDS = 1e5
RELATIVE_ERROR = 10 ** (1 / (2 * BUCKETS_PER_DECADE)) - 1


def bucket_of(seconds: float) -> int:
    clamped = min(max(seconds, MIN_SECONDS), MAX_SECONDS)
    return math.floor(math.log10(clamped) * BUCKETS_PER_DECADE)


def bucket_midpoint(bucket: int) -> float:
    return 10 ** ((bucket + 0.5) / BUCKETS_PER_DECADE)


# What a rollup hour holds and the stats selector adds up, by name.
COUNTED = (
    "total", "completed", "failed", "cancelled", "running", "pending",
    "timed", "time_sum", "input_tokens", "output_tokens", "cost",
)  # fmt: skip


def execution_totals() -> dict[str, Any]:
    """The aggregates of COUNTED over a queryset of executions (a whole agent's, or grouped by hour)."""
    S = ExecutionStatus
    completed = Q(status=S.COMPLETED)
    return {
        "total": Count("id"),
        "completed": Count("id", filter=completed),
        "failed": Count("id", filter=Q(status=S.FAILED)),
        "cancelled": Count("id", filter=Q(status=S.CANCELLED)),
        "running": Count("id", filter=Q(status=S.RUNNING)),
        "pending": Count("id", filter=Q(status=S.PENDING)),
        "timed": Count("execution_time", filter=completed),
        "time_sum": Coalesce(Sum("execution_time", filter=completed), 0.0),
        "input_tokens": Coalesce(Sum("input_tokens"), 0),
        "output_tokens": Coalesce(Sum("output_tokens"), 0),
        "cost": Coalesce(Sum("cost"), Decimal("0")),
    }


@dataclass(frozen=True, slots=True)
class RollupReport:
    rollup_pass: int
    executions: int
    hours: int
    buckets: int


def _bucket_expression():
    # floor(ln(t) / ln(10) * 20), with t clamped as bucket_of() does: the same numbers on both databases
    # (Django supplies LN, FLOOR, MAX and MIN on SQLite).
    seconds = Least(Greatest(F("execution_time"), Value(MIN_SECONDS)), Value(MAX_SECONDS))
    return Floor(
        Ln(seconds) / Value(math.log(10)) * Value(float(BUCKETS_PER_DECADE)), output_field=FloatField()
    )


def roll_up() -> RollupReport:
    """Count every terminal execution that no pass has counted yet into the rollup tables."""
    with transaction.atomic():
        StatsRollupState.objects.get_or_create(pk=1)
        StatsRollupState.objects.filter(pk=1).update(last_pass=F("last_pass") + 1, updated_at=timezone.now())
        number = StatsRollupState.objects.values_list("last_pass", flat=True).get(pk=1)
        stamped = AgentExecution.objects.filter(
            rollup_pass__isnull=True, status__in=TERMINAL_STATUSES, agent__isnull=False
        ).update(rollup_pass=number)
        if not stamped:
            return RollupReport(number, 0, 0, 0)
        rows = AgentExecution.objects.filter(rollup_pass=number).annotate(
            hour=TruncHour(Coalesce("finished_at", "created_at"))
        )
        hours = _roll_hours(rows)
        buckets = _roll_buckets(rows)
    logger.info(
        "stats rollup pass %d: %d executions into %d hours, %d buckets", number, stamped, hours, buckets
    )
    return RollupReport(number, stamped, hours, buckets)


def _roll_hours(window) -> int:
    rows = window.values("agent_id", "hour").annotate(**execution_totals()).order_by()
    fields = list(COUNTED)
    fresh = {(row["agent_id"], row["hour"]): row for row in rows}
    if not fresh:
        return 0
    # Only this pass writes the rollup tables (the watermark claim serialises passes), so reading the
    # existing rows and adding in Python is safe, and keeps Decimal sums exact on SQLite too.
    existing = {
        (h.agent_id, h.hour): h
        for h in AgentStatsHour.objects.filter(
            agent_id__in={a for a, _ in fresh}, hour__in={h for _, h in fresh}
        )
    }
    created, updated = [], []
    for key, row in fresh.items():
        hour = existing.get(key)
        if hour is None:
            created.append(AgentStatsHour(agent_id=key[0], hour=key[1], **{f: row[f] for f in fields}))
            continue
        for f in fields:
            setattr(hour, f, getattr(hour, f) + (Decimal(row[f]) if f == "cost" else row[f]))
        updated.append(hour)
    AgentStatsHour.objects.bulk_create(created, batch_size=500)
    AgentStatsHour.objects.bulk_update(updated, fields, batch_size=500)
    return len(fresh)


def _roll_buckets(window) -> int:
    rows = (
        window.filter(status=ExecutionStatus.COMPLETED, execution_time__isnull=False)
        .annotate(bucket=_bucket_expression())
        .values("agent_id", "hour", "bucket")
        .annotate(count=Count("id"))
        .order_by()
    )
    fresh = {(row["agent_id"], row["hour"], int(row["bucket"])): row["count"] for row in rows}
    if not fresh:
        return 0
    existing = {
        (b.agent_id, b.hour, b.bucket): b
        for b in AgentLatencyBucket.objects.filter(
            agent_id__in={a for a, _, _ in fresh}, hour__in={h for _, h, _ in fresh}
        )
    }
    created, updated = [], []
    for key, count in fresh.items():
        bucket = existing.get(key)
        if bucket is None:
            created.append(AgentLatencyBucket(agent_id=key[0], hour=key[1], bucket=key[2], count=count))
        else:
            bucket.count += count
            updated.append(bucket)
    AgentLatencyBucket.objects.bulk_create(created, batch_size=1000)
    AgentLatencyBucket.objects.bulk_update(updated, ["count"], batch_size=1000)
    return len(fresh)
