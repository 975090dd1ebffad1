"""The stats rollup: exact per-agent, per-hour counts and latency histograms that services/stats_rollup.py
folds finished executions into, so that the stats pages read a few rows instead of scanning executions."""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.agents.models import Agent


class StatsRollupState(models.Model):
    """The single row that numbers stats rollup passes (services/stats_rollup.py)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_pass = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"stats rollup pass {self.last_pass}"


class AgentStatsHour(models.Model):
    """Exact counts and sums of an agent's executions that finished within one hour (UTC)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="stats_hours")
    hour = models.DateTimeField()
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0)
    pending = models.PositiveIntegerField(default=0)
    timed = models.PositiveIntegerField(default=0, help_text="Completed runs with an execution time.")
    time_sum = models.FloatField(default=0.0, help_text="Sum of those execution times (seconds).")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal("0"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "hour"], name="stats_hour_unique")]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.hour:%Y-%m-%d %H}h: {self.total}"


class AgentLatencyBucket(models.Model):
    """How many completed runs of an agent, finished within one hour, took a time in one histogram bucket."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="latency_buckets")
    hour = models.DateTimeField()
    bucket = models.SmallIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "hour", "bucket"], name="latency_bucket_unique")
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.hour:%Y-%m-%d %H}h bucket {self.bucket}: {self.count}"
