"""The PostgreSQL pool's connection check, a round trip only where a connection could have gone stale.

Django's pool with CONN_HEALTH_CHECKS runs psycopg_pool's check_connection (an empty query: one round trip)
every time a connection is taken from the pool. Each run takes one per unit of database work (its INSERT,
each budget hold, its final UPDATE: services/db.py gives the connection back after each), so on a loaded
server that check was a third of a run's database time for connections that had answered a few milliseconds
earlier (bench/engine.py: 0.38 ms per checkout, three per run under a budget). Here a connection back in the
pool for less than CHECK_AFTER_IDLE_SECONDS is handed out unchecked; one idle for longer (it may have been
cut by a restart of PostgreSQL, a proxy's idle timeout, a network blip) is checked as before, and replaced if
the check fails. A connection that breaks while in use is discarded by the pool when it comes back.
"""

from __future__ import annotations

import time
from typing import Any

#: Seconds a connection may sit in the pool and still be handed out without a check.
CHECK_AFTER_IDLE_SECONDS = 2.0


def note_return(connection: Any) -> None:
    """Note that `connection` is going back to the pool now (config/postgresql/base.py, as Django gives it back)."""
    connection._returned_at = time.monotonic()


def check_if_idle(connection: Any) -> None:
    """The pool's `check` callback: check_connection for a connection idle too long (or never used)."""
    returned = getattr(connection, "_returned_at", None)
    if returned is None or time.monotonic() - returned > CHECK_AFTER_IDLE_SECONDS:
        from psycopg_pool import ConnectionPool

        ConnectionPool.check_connection(connection)


def prepare_threshold(setting: str) -> int | None:
    """DB_PREPARE_THRESHOLD as psycopg's `prepare_threshold`: after how many uses on a connection a statement
    bound on the server is prepared there; "off" (or empty) never prepares."""
    value = setting.strip().lower()
    if value in ("", "off", "none"):
        return None
    threshold = int(value)
    if threshold < 0:
        raise ValueError(f"DB_PREPARE_THRESHOLD must be a count of uses or 'off', not {setting!r}")
    return threshold
