"""A management command that does one pass, or one every N seconds with --every (for a machine without
celery beat): reap_executions and rollup_stats."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandParser


class PeriodicCommand(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=float,
            default=0.0,
            help="Keep running, one pass every N seconds (for a machine without celery beat).",
        )

    def handle(self, *args, every: float = 0.0, **options) -> None:
        while True:
            self.run_pass()
            if every <= 0:
                return
            time.sleep(every)

    def run_pass(self) -> None:
        raise NotImplementedError
