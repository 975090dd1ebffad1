"""config/redis_cache.py: Django's Redis caches (REDIS_URL set: tokens, agents, rate limits, login counters)
share one connection pool per process instead of connecting anew for every request, and a rate limit counts a
request in one round trip with the counter's expiry never lost."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import weakref
from typing import Any
from unittest import mock

import pytest
import redis
import redis.asyncio
from django.core.cache import CacheHandler, caches

from tests.agents.api.conftest import throttle_rates

URL = "redis://127.0.0.1:6379/13"
SHARED = "config.redis_cache.SharedRedisCache"


@pytest.fixture
def server() -> redis.Redis:
    client = redis.Redis.from_url(URL)
    yield client
    client.close()


def cache_handler(backend: str = SHARED) -> CacheHandler:
    # A key prefix of its own: tests on other xdist workers use the same Redis database.
    return CacheHandler({"r": {"BACKEND": backend, "LOCATION": URL, "KEY_PREFIX": uuid.uuid4().hex}})


def connections_received(server: redis.Redis) -> int:
    return int(server.info("stats")["total_connections_received"])


def test_each_request_context_uses_the_process_connection_pool(server):
    """Django keeps a cache backend per thread and, under ASGI, per request context: with Django's own
    RedisCache each of them built a pool and opened a connection (20 requests here: 20 connections)."""
    handler = cache_handler()
    clients = []

    def request(number: int) -> None:  # a thread of its own: a new context, so a new backend instance
        cache = handler["r"]
        cache.set(f"k{number}", number)
        assert cache.get(f"k{number}") == number
        clients.append(cache._cache)

    before = connections_received(server)
    for number in range(20):  # one after another: a single pooled connection can serve them all
        thread = threading.Thread(target=request, args=(number,))
        thread.start()
        thread.join()
    opened = connections_received(server) - before

    assert len(clients) == 20 and all(client is clients[0] for client in clients)
    assert opened <= 2, f"{opened} connections for 20 requests"


def test_a_counter_is_counted_and_expires_in_one_round_trip(server):
    cache = cache_handler()["r"]
    key = cache.make_and_validate_key("hits")

    assert [cache.incr_with_expiry({"hits": 61}) for _ in range(3)] == [[1], [2], [3]]
    assert 0 < server.ttl(key) <= 61  # the window's counter goes away with its window
    assert cache.get("hits") == 3  # the same value Django's cache API reads


def test_several_counters_are_counted_in_one_round_trip(server):
    cache = cache_handler()["r"]
    cache.incr_with_expiry({"user": 61})  # the connection is open: what follows is commands only
    connection = redis.connection.AbstractConnection
    with mock.patch.object(
        connection, "send_packed_command", autospec=True, side_effect=connection.send_packed_command
    ) as sends:
        assert cache.incr_with_expiry({"user": 61, "runs": 3601}) == [2, 1]  # in the order given

    assert sends.call_count == 1  # MULTI, two INCR and two EXPIRE, EXEC: written at once, read at once
    assert 3540 < server.ttl(cache.make_and_validate_key("runs")) <= 3601


@pytest.mark.django_db
@throttle_rates(user="3/min")
def test_rate_limits_counted_in_redis_refuse_past_the_rate(settings, alice_client, server):
    prefix = uuid.uuid4().hex
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {"BACKEND": SHARED, "LOCATION": URL, "KEY_PREFIX": prefix},
    }
    try:
        for _ in range(3):
            assert alice_client.get("/api/v1/agents/").status_code == 200
        refused = alice_client.get("/api/v1/agents/")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "throttled"
        keys = server.keys(f"{prefix}:*")
        assert keys and all(0 < server.ttl(key) <= 61 for key in keys)
    finally:
        caches["throttle"].clear()


async def test_a_counter_counted_from_the_event_loop_is_the_same_counter_in_one_round_trip(server):
    """aincr_with_expiry (the run admission on the loop): the same MULTI on the same key, through the loop's
    own asyncio client (asyncio connections belong to the loop that opened them)."""
    cache = cache_handler()["r"]
    assert cache.incr_with_expiry({"hits": 61}) == [1]
    assert await cache.aincr_with_expiry({"hits": 61, "runs": 3601}) == [2, 1]
    client = cache._cache.loop_client()
    with mock.patch.object(
        redis.asyncio.connection.AbstractConnection, "send_packed_command", autospec=True,
        side_effect=redis.asyncio.connection.AbstractConnection.send_packed_command,
    ) as sends:  # fmt: skip
        assert await cache.aincr_with_expiry({"hits": 61}) == [3]

    assert sends.call_count == 1
    assert cache.get("hits") == 3
    assert 3540 < server.ttl(cache.make_and_validate_key("runs")) <= 3601
    assert cache._cache.loop_client() is client  # one per loop
    await client.aclose()


async def test_a_closed_loop_s_client_is_dropped_and_collected_when_another_loop_asks(server):
    """Its connections refer to their loop: kept in a WeakKeyDictionary they kept their loop, and themselves,
    alive for good (an open socket per finished loop). Dropped, they are collected, sockets closed."""
    cache = cache_handler()["r"]

    async def count_once() -> Any:
        await cache.aincr_with_expiry({"hits": 61})
        return weakref.ref(cache._cache.loop_client())

    finished = await asyncio.to_thread(asyncio.run, count_once())  # that loop is closed now
    assert finished() is not None and finished() in cache._cache._loop_clients.values()

    mine = cache._cache.loop_client()  # another loop asks
    gc.collect()

    assert finished() is None  # dropped, and its connection with it
    # Another running loop's (a live server's, sharing this process's client) would stay; a closed one does not.
    assert mine in cache._cache._loop_clients.values()
    assert not any(loop.is_closed() for loop in cache._cache._loop_clients)
    await mine.aclose()
