"""Django's PostgreSQL backend, with the pool's connection check of config/db_pool.py.

psycopg_pool takes its `check` callback only when the pool is built, and Django builds it with its own
(CONN_HEALTH_CHECKS: a round trip on every checkout) or with none. This wrapper hands every pool Django
builds (it builds a new one after close_pool()) the check that runs only for a connection left idle."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from config.db_pool import check_if_idle


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool
        if pool is not None and getattr(pool, "_check", None) is not check_if_idle:
            pool._check = check_if_idle
        return pool
