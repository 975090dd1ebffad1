"""Every log line carries the id of the execution it belongs to (or "-")."""

import logging

from apps.agents.engine.context import current_execution_id


class ExecutionIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "execution_id"):
            record.execution_id = current_execution_id.get() or "-"
        return True
