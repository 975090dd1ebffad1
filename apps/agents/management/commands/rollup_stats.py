"""`manage.py rollup_stats`: count every finished execution not yet counted into the per-agent hourly rollups
that agent stats read (the same pass celery beat runs every STATS_ROLLUP_SECONDS). Safe at any time and from
anywhere: passes are serialised in the database and a row is counted by exactly one pass."""

import time

from apps.agents.management.periodic import PeriodicCommand
from apps.agents.services.stats_rollup import roll_up


class Command(PeriodicCommand):
    help = "Roll finished executions up into the per-agent hourly stats tables."

    def run_pass(self) -> None:
        started = time.perf_counter()
        report = roll_up()
        self.stdout.write(
            f"pass {report.rollup_pass}: {report.executions} executions into {report.hours} agent-hours "
            f"and {report.buckets} latency buckets in {time.perf_counter() - started:.2f} s"
        )
