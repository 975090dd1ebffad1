"""A Redis cache with a copy of what it read kept in the process, dropped when any process changes it.

The "auth" cache (tokens, agents, budgets: apps/agents/api/authentication.py, agent_cache.py,
services/budget_cache.py) is read on every run request and changed only when staff or a user save something.
With REDIS_URL set those reads were three Redis round trips per run request, each a blocking read and a
thread wake-up: about 1.4 ms of the server's CPU per request at c=16 (bench/api.py), the largest cost left
once the pool was shared (config/redis_cache.py).

Here every write to the cache (set, add, delete, ...) also publishes the keys it touched on a channel of the
cache's own, and each process keeps the raw bytes it read from Redis (with the key's expiry from Redis, read in
the same round trip) until a notice names them. A read is answered from the process only while the process
can trust its copies:

- its subscriber thread is subscribed, and heard from Redis within LEASE_SECONDS (it pings every
  PING_SECONDS): after a silent network failure copies are used for LEASE_SECONDS at most;
- no notice is waiting on the subscriber's socket or being applied (a zero-timeout poll and the apply lock,
  checked in that order), so a notice that has arrived counts at once, however long the subscriber thread
  waits for the GIL. Redis writes a notice to the subscribers in the same pass of its event loop as its reply
  to the writer: a request sent after a change was made finds the notice here, short of a network that
  delivers the request first;
- a copy read from Redis is kept only if no notice arrived while it was being read (the generation check):
  a notice for a change made just after the read would otherwise be applied before the stale copy is kept.

Subscribing clears every copy (notices sent while unsubscribed are lost), and so does losing the connection.
Copies are raw bytes, unpickled per read as Redis' would be, so no two requests share an object. At most
MAX_ENTRIES are kept; the oldest go first.

Why our own: redis-py's client-side caching (RESP3 CLIENT TRACKING, the library answer) refuses servers older
than Redis 7.4, and Django's cache API has no near cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import select
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.locmem import LocMemCache

from config.redis_cache import SharedRedisCache, SharedRedisCacheClient

logger = logging.getLogger(__name__)

PING_SECONDS = 1.0
LEASE_SECONDS = 3.0
RECONNECT_SECONDS = 1.0
MAX_ENTRIES = 10_000


class NearCopies:
    """This process's copies of one cache's entries, and the thread that keeps them honest."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._entries: dict[str, tuple[bytes, float]] = {}  # key -> (raw value, monotonic deadline)
        self.generation = 0  # bumped by every notice, (un)subscription and local write
        self._heard = -math.inf  # monotonic time the subscriber last heard Redis; -inf: not subscribed
        self._fd = -1  # the subscriber's socket, polled by readers for notices not yet applied
        self._apply = threading.Lock()  # held while notices are read and applied, and for every write here
        self._pid: int | None = None  # the process whose subscriber thread keeps these copies
        os.register_at_fork(after_in_child=self._forget_parent)

    def _forget_parent(self) -> None:
        # A forked child (Celery's prefork pool) has no subscriber thread, and the parent's lock may have
        # been held by it at the fork: the child starts over on its first read.
        self._apply = threading.Lock()
        self._entries = {}
        self._heard = -math.inf
        self._fd = -1
        self._pid = None

    # --- readers (request threads) ---------------------------------------------------------------------

    def trusted(self) -> bool:
        """Whether copies may answer a read now (see the module docstring); starts the subscriber if this
        process has none yet (the first process, or a forked child)."""
        if self._pid != os.getpid():
            self._start()
            return False
        if time.monotonic() - self._heard > LEASE_SECONDS or self._fd < 0:
            return False
        try:  # a notice on the socket first, then one being applied: that order leaves no gap between them
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            if poller.poll(0):
                return False
        except (OSError, ValueError):
            return False
        return not self._apply.locked()

    def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def keep(self, generation: int, found: dict[str, tuple[bytes, int]]) -> None:
        """Keep values read from Redis with their PTTL (-1: no expiry), unless a notice came in meanwhile or
        is being applied (then the next read goes to Redis again: a request never waits here)."""
        if not self._apply.acquire(blocking=False):
            return
        try:
            if generation != self.generation:
                return
            now = time.monotonic()
            for key, (raw, ttl_ms) in found.items():
                if ttl_ms == -1 or ttl_ms > 0:
                    while len(self._entries) >= MAX_ENTRIES:
                        self._entries.pop(next(iter(self._entries)))
                    self._entries[key] = (raw, math.inf if ttl_ms == -1 else now + ttl_ms / 1000)
        finally:
            self._apply.release()

    def drop(self, keys: Iterable[str] | None) -> None:
        """Forget `keys` (None: every copy); a read under way is not kept."""
        with self._apply:
            self._drop(keys)

    def _drop(self, keys: Iterable[str] | None) -> None:
        self.generation += 1
        if keys is None:
            self._entries.clear()
        else:
            for key in keys:
                self._entries.pop(key, None)

    # --- the subscriber thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._apply:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._listen, name="near-cache", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                self._subscribe_and_serve()
            except Exception:
                logger.warning(
                    "near cache: Redis subscription lost; reading Redis until it is back", exc_info=True
                )
            time.sleep(RECONNECT_SECONDS)

    def _subscribe_and_serve(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: a reconnection made there would lose notices unseen; here losing the
        # connection clears the copies instead.
        client = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=5,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
            client_name=f"{self.channel}:{os.getpid()}",  # what CLIENT LIST shows operators
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)  # copies are trusted from its confirmation (_on_message)
            self._fd = pubsub.connection._sock.fileno()
            waiting = select.poll()  # not select(): a busy server's descriptors go past FD_SETSIZE
            waiting.register(self._fd, select.POLLIN)
            pinged = -math.inf
            while True:
                if time.monotonic() - pinged >= PING_SECONDS:
                    pubsub.ping()  # its pong renews the lease
                    pinged = time.monotonic()
                self._wait(waiting)
                with self._apply:
                    while (message := pubsub.get_message(timeout=0)) is not None:
                        self._on_message(message)
        finally:
            with self._apply:  # distrusted before the socket closes: its descriptor number may be reused
                self._heard = -math.inf
                self._drop(None)
                self._fd = -1
            pubsub.close()
            client.close()

    def _wait(self, waiting: select.poll) -> None:
        # Without the lock: readers trust the copies meanwhile, unless a notice is on the socket.
        waiting.poll(PING_SECONDS * 1000)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":  # notices sent before now were not heard
            self._drop(None)
        elif kind == "message":
            keys = json.loads(message["data"])
            self._drop(None if keys is None else keys)
        self._heard = time.monotonic()  # pongs too


class NearRedisCacheClient(SharedRedisCacheClient):
    """SharedRedisCacheClient whose reads go through this process's copies and whose writes announce the keys
    they change."""

    def __init__(self, servers: list[str], channel: str, **options: Any) -> None:
        super().__init__(servers, **options)
        self.copies = NearCopies(servers[0], channel)

    def get(self, key: str, default: Any) -> Any:
        found = self._read([key])
        return default if key not in found else self._serializer.loads(found[key])

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {key: self._serializer.loads(raw) for key, raw in self._read(keys).items()}

    def peek_many(self, keys: list[str]) -> dict[str, Any] | None:
        """The values of `keys` that this process's copies hold, or None when they cannot answer now (not
        trusted, or one of `keys` not copied): what get_many would return, without I/O."""
        copies = self.copies
        if not copies.trusted():
            return None
        raws = [copies.get(key) for key in keys]
        if any(raw is None for raw in raws):
            return None
        return {key: self._serializer.loads(raw) for key, raw in zip(keys, raws, strict=True)}

    def _read(self, keys: list[str]) -> dict[str, bytes]:
        copies = self.copies
        if not copies.trusted():
            raws = self.get_client(None).mget(keys)
            return {key: raw for key, raw in zip(keys, raws, strict=True) if raw is not None}
        found = {key: raw for key in keys if (raw := copies.get(key)) is not None}
        missing = [key for key in keys if key not in found]
        if missing:
            generation = copies.generation
            # Values and their remaining lives in one round trip, and at one moment (MULTI).
            with self.get_client(None).pipeline(transaction=True) as pipe:
                pipe.mget(missing)
                for key in missing:
                    pipe.pttl(key)
                raws, *ttls = pipe.execute()
            read = {
                key: (raw, ttl) for key, raw, ttl in zip(missing, raws, ttls, strict=True) if raw is not None
            }
            copies.keep(generation, read)
            found.update((key, raw) for key, (raw, _) in read.items())
        return found

    def _announce(self, keys: list[str] | None) -> None:
        """Drop this process's copies of `keys` (None: all) and tell every other process to."""
        self.copies.drop(keys)
        self.get_client(None, write=True).publish(self.copies.channel, json.dumps(keys))

    def add(self, key: str, value: Any, timeout: Any) -> bool:
        added = super().add(key, value, timeout)
        if added:
            self._announce([key])
        return added

    def set(self, key: str, value: Any, timeout: Any) -> None:
        super().set(key, value, timeout)
        self._announce([key])

    def touch(self, key: str, timeout: Any) -> bool:
        touched = super().touch(key, timeout)
        self._announce([key])  # copies carry the old expiry
        return touched

    def delete(self, key: str) -> bool:
        deleted = super().delete(key)
        self._announce([key])
        return deleted

    def incr(self, key: str, delta: int) -> int:
        value = super().incr(key, delta)
        self._announce([key])
        return value

    def set_many(self, data: dict[str, Any], timeout: Any) -> None:
        super().set_many(data, timeout)
        self._announce(list(data))

    def delete_many(self, keys: list[str]) -> None:
        super().delete_many(keys)
        self._announce(list(keys))

    def clear(self) -> bool:
        cleared = super().clear()
        self._announce(None)
        return cleared


class NearRedisCache(SharedRedisCache):
    """settings.CACHES BACKEND "config.near_cache.NearRedisCache": SharedRedisCache (same LOCATION and OPTIONS)
    with reads answered from this process's copies while they are current (the module docstring)."""

    def _shared_as(self) -> tuple[str, ...]:
        # The key prefix too, as it names the channel: caches that share a Redis server (tests on several
        # xdist workers, two deployments) do not hear each other's notices.
        return (*super()._shared_as(), self.key_prefix)

    def _new_client(self) -> NearRedisCacheClient:
        digest = hashlib.sha256(repr(self._shared_as()).encode()).hexdigest()[:24]
        return NearRedisCacheClient(self._servers, f"near-cache:{digest}", **self._options)

    def peek_many(self, keys: list[str], version: int | None = None) -> dict[str, Any] | None:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self._cache.peek_many(list(made))
        return None if found is None else {made[key]: value for key, value in found.items()}


def peek_many(cache: BaseCache, keys: list[str]) -> dict[str, Any] | None:
    """Every one of `keys` as `cache.get_many` would give it, if this process can answer without I/O (the
    event loop's admission, apps/agents/services/loop_admission.py): from the near cache's trusted copies or
    the process's own memory (LocMemCache). None otherwise, also when one of `keys` is not there: the
    caller then reads the cache the usual way, in a thread."""
    if isinstance(cache, LocMemCache):
        found = cache.get_many(keys)
        return found if len(found) == len(keys) else None
    peek = getattr(cache, "peek_many", None)
    return peek(keys) if peek is not None else None
