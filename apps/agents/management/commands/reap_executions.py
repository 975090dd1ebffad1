"""`manage.py reap_executions`: end every execution left pending or running by a lost process (the same pass
celery beat runs every REAPER_INTERVAL_SECONDS). Safe to run at any time, from anywhere, as often as wanted:
each row is ended by a conditional update, so a live run is never touched."""

from apps.agents.management.periodic import PeriodicCommand
from apps.agents.services.reaper import reap


class Command(PeriodicCommand):
    help = "Fail executions whose worker was lost or whose deadline passed (worker_lost / timeout)."

    def run_pass(self) -> None:
        report = reap()
        self.stdout.write(
            f"reaped {report.total}: {len(report.lost)} worker_lost, {len(report.timed_out)} timeout, "
            f"{len(report.cancelled)} cancelled; {len(report.redispatched)} unstarted sent again"
        )
        for execution_id in report.lost + report.timed_out + report.cancelled:
            self.stdout.write(f"  {execution_id}")
