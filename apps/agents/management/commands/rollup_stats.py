"""`manage.py rollup_stats`: count every finished execution not yet counted into the per-agent hourly rollups
that agent stats read (the same pass celery beat runs every STATS_ROLLUP_SECONDS). Safe at any time and from
anywhere: passes are serialised in the database and a row is counted by exactly one pass."""

import time

from django.core.management.base import BaseCommand, CommandParser

from apps.agents.services.stats_rollup import roll_up


class Command(BaseCommand):
    help = "Roll finished executions up into the per-agent hourly stats tables."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=float,
            default=0.0,
            help="Keep running, one pass every N seconds (for a machine without celery beat).",
        )

    def handle(self, *args, every: float = 0.0, **options) -> None:
        while True:
            started = time.perf_counter()
            report = roll_up()
            self.stdout.write(
                f"pass {report.rollup_pass}: {report.executions} executions into {report.hours} agent-hours "
                f"and {report.buckets} latency buckets in {time.perf_counter() - started:.2f} s"
            )
            if every <= 0:
                return
            time.sleep(every)
