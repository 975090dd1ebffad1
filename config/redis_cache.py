"""Django's RedisCache with one Redis client, and so one connection pool, per process and configuration.

Django keeps a cache backend instance per thread, and under ASGI per request (`caches` is a Local, and every
request runs in a context of its own), and each RedisCache instance builds its own client with its own
connection pool. So every request of the ASGI server opened new connections to Redis (a TCP connect, HELLO,
CLIENT SETINFO) and dropped them when its context was collected: Redis saw about 1.7 new connections per run
request, and with REDIS_URL set a run request cost 12.6-13.3 ms of server CPU against 5.5 ms without
(`BENCH_REDIS_URL=redis://127.0.0.1:6379/9 bench/api.py --variants pool`, 2026-12-03). Django's own fix is
still an open pull request (django/django#18459).

redis-py's pools and clients are meant to be shared: thread-safe, and a pool reset in a forked child (Celery's
prefork workers) because it checks the pid. Django's client also built a `redis.Redis` for every command (a
copy of its table of response callbacks each time); here one is kept per pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property


class SharedRedisCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._clients: dict[int, Any] = {}  # id(pool) -> redis.Redis over that pool (pools live as long)
        # Event loop -> redis.asyncio.Redis on the primary: asyncio connections belong to the loop that opened
        # them. A plain dict, not a WeakKeyDictionary: a client's connections refer to their loop, so a weak
        # key would never die. A closed loop's client is dropped when another loop asks (loop_client), and
        # its connections, unreachable with their loop, are closed by the garbage collector (the transports
        # close their sockets when collected). A server has one loop per process; tests and management
        # commands' asyncio.run have more.
        self._loop_clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._loop_clients_lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client

    def loop_client(self) -> Any:
        """A redis.asyncio client of the running event loop, on the primary (where writes go)."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is not None:
            return client
        # Django's options less its parser, which is redis-py's sync one (asyncio picks its own).
        options = {name: value for name, value in self._pool_options.items() if name != "parser_class"}
        client = redis.asyncio.Redis(
            connection_pool=redis.asyncio.ConnectionPool.from_url(self._servers[0], **options)
        )
        with self._loop_clients_lock:  # loops of several threads may ask (a live server's, a test's)
            for closed in [other for other in self._loop_clients if other.is_closed()]:
                del self._loop_clients[closed]
            return self._loop_clients.setdefault(loop, client)


_clients: dict[tuple[str, ...], SharedRedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    """settings.CACHES BACKEND "config.redis_cache.SharedRedisCache": as Django's RedisCache (same LOCATION and
    OPTIONS), with every instance of one configuration in this process using the same client."""

    @cached_property
    def _cache(self) -> SharedRedisCacheClient:  # type: ignore[override]
        key = self._shared_as()
        client = _clients.get(key)
        if client is None:
            with _lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = self._new_client()
        return client

    def _shared_as(self) -> tuple[str, ...]:
        """What instances that may share a client have in common: the servers and options as written in the
        settings (their repr: OPTIONS may hold classes)."""
        return (type(self).__name__, *self._servers, repr(sorted(self._options.items())))

    def _new_client(self) -> SharedRedisCacheClient:
        return SharedRedisCacheClient(self._servers, **self._options)

    def incr_with_expiry(self, counters: Mapping[str, int], version: int | None = None) -> list[int]:
        """Each counter plus one (created at 1), living its number of seconds from now, and the counts in the
        same order: INCR and EXPIRE of every counter in one round trip, and in one MULTI so that no counter
        is ever left without its expiry. Django's add() + incr() took three round trips per counter (incr
        checks EXISTS first), the rate limits' largest cost with Redis."""
        with self._cache.get_client(None, write=True).pipeline(transaction=True) as pipe:
            return self._counts(self._queue_counts(pipe, counters, version).execute())

    async def aincr_with_expiry(self, counters: Mapping[str, int], version: int | None = None) -> list[int]:
        """incr_with_expiry from the event loop (the same MULTI), over the loop's own asyncio client."""
        async with self._cache.loop_client().pipeline(transaction=True) as pipe:
            return self._counts(await self._queue_counts(pipe, counters, version).execute())

    def _queue_counts(self, pipe: Any, counters: Mapping[str, int], version: int | None) -> Any:
        for key, seconds in counters.items():
            made = self.make_and_validate_key(key, version=version)
            pipe.incr(made).expire(made, seconds)
        return pipe

    @staticmethod
    def _counts(replies: list[Any]) -> list[int]:
        return [int(count) for count in replies[::2]]
