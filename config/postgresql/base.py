"""Django's PostgreSQL backend, with the pool's connection check of config/db_pool.py.

psycopg_pool takes its `check` callback only when the pool is built, and Django builds it with its own
(CONN_HEALTH_CHECKS: a round trip on every checkout) or with none. This wrapper hands every pool Django
builds (it builds a new one after close_pool()) the check that runs only for a connection left idle, and
notes when each connection goes back to the pool, which that check reads.

The note is taken here, in the thread giving the connection back, not by a pool `reset` callback: with one,
psycopg_pool returns every connection through its worker thread (a queue, a wake-up, the GIL handed over
twice), and the connection cannot be handed out again until that thread has run.

It also lets psycopg keep the parsed form of longer statements. psycopg caches the split of a query at its
`%s` placeholders (whether it then binds on the client or on the server) only for statements under 4 KB and
50 parameters; a budgeted run's INSERT (with its first hold, services/budget_ledger.py insert_and_hold) has
56-84 and was parsed again on every run: 0.22 ms of CPU (bench/engine.py). The cache is keyed by the
statement's text, which our statements build in a few shapes; a miss only costs that parse again."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base
from psycopg import _queries

from config.db_pool import check_if_idle, note_return

_queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, 200)
_queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, 16384)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool
        if pool is not None and getattr(pool, "_check", None) is not check_if_idle:
            pool._check = check_if_idle
        return pool

    def _close(self) -> None:
        if self.connection is not None and self.pool:
            note_return(self.connection)
        super()._close()
