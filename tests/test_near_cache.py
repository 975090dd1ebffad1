"""config/near_cache.py: the "auth" cache (tokens, agents, budgets) read from the process's own copies while
they are current, against a real Redis: a value read once is read again without Redis, and no copy outlives
a change made by any process, a read that raced the change, a lost subscription or a silent Redis."""

from __future__ import annotations

import multiprocessing
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import redis
from django.core.cache import CacheHandler

from config import near_cache
from config.near_cache import NearRedisCacheClient

URL = "redis://127.0.0.1:6379/13"
NEAR = "config.near_cache.NearRedisCache"


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    yield client
    client.close()


def near(prefix: str | None = None, location: str = URL) -> Any:
    """A near cache of its own (a key prefix, so a channel and copies of its own), subscribed."""
    config = {"BACKEND": NEAR, "LOCATION": location, "KEY_PREFIX": prefix or uuid.uuid4().hex}
    cache = CacheHandler({"n": config})["n"]
    wait_until_trusted(cache)
    return cache


def wait_until_trusted(cache: Any) -> None:
    """Until the subscription is confirmed and no notice waits (a write's own notice comes back to it)."""
    deadline = time.monotonic() + 10
    while not cache._cache.copies.trusted():
        assert time.monotonic() < deadline, "the near cache's subscription was not confirmed"
        time.sleep(0.01)


def until(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    """Whether `condition` holds within `seconds`. Redis writes a notice to its subscribers in the same pass of
    its event loop as the writer's reply, but not necessarily before it: a reader asking in the very next
    microseconds may be a notice early (a request arriving over the network is not)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def another_process(cache: Any) -> NearRedisCacheClient:
    """What another server process holds for the same cache: copies of its own, notices on the same channel."""
    return NearRedisCacheClient(cache._servers, cache._cache.copies.channel)


@contextmanager
def redis_commands() -> Iterator[list[object]]:
    """What this thread writes to any Redis connection (one write per command or pipeline); the subscriber
    thread's pings are not counted."""
    connection = redis.connection.AbstractConnection
    send = connection.send_packed_command
    sent: list[object] = []
    me = threading.get_ident()

    def counted(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            sent.append(command)
        return send(self, command, *args, **kwargs)

    with mock.patch.object(connection, "send_packed_command", counted):
        yield sent


@pytest.fixture
def no_pongs(monkeypatch):  # type: ignore[no-untyped-def]
    """One ping when the subscriber starts, then none for the test's few seconds (within the lease): a pong
    arriving between the reads below would be unread data on the subscriber's socket, and copies are not
    trusted while any is (by design), so the read would go to Redis: a flake under load, seen in CI."""
    monkeypatch.setattr(near_cache, "PING_SECONDS", 60.0)


def quiet(cache: Any) -> Any:
    """The cache once its subscriber has read the starting ping's pong (no more come: no_pongs)."""
    wait_until_trusted(cache)
    time.sleep(0.05)
    wait_until_trusted(cache)
    return cache


def test_a_value_read_once_is_read_again_without_redis(no_pongs):
    cache = quiet(near())
    cache.set("agent", {"slug": "helper"}, 60)
    wait_until_trusted(cache)
    first = cache.get("agent")  # from Redis, with the key's remaining life, into the copies
    with redis_commands() as sends:
        again = cache.get("agent")
        both = cache.get_many(["agent", "absent"])

    assert len(sends) == 1  # "absent" only: a miss is never kept
    assert first == again == both["agent"] == {"slug": "helper"} and "absent" not in both
    assert again is not first  # unpickled per read: no request shares another's object


def test_a_copy_lives_no_longer_than_its_key_in_redis():
    cache = near()
    cache.set("token", "alice", 1)
    assert cache.get("token") == "alice"
    time.sleep(1.1)
    assert cache.get("token") is None


def serve_reads(pipe: Any, prefix: str) -> None:
    """A forked process (as Celery's prefork pool makes them) answering reads: (value, commands sent)."""
    cache = CacheHandler({"n": {"BACKEND": NEAR, "LOCATION": URL, "KEY_PREFIX": prefix}})["n"]
    while (key := pipe.recv()) is not None:
        with redis_commands() as sends:
            value = cache.get(key)
        pipe.send((value, len(sends)))


def test_a_change_made_in_another_process_is_read_there():
    prefix = uuid.uuid4().hex
    cache = near(prefix)  # this process has the client before the fork, as a Celery parent would
    cache.set("user", 0, 60)
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=serve_reads, args=(theirs, prefix), daemon=True
    )
    child.start()
    try:

        def read_there() -> tuple[Any, int]:
            ours.send("user")
            assert ours.poll(10), "the forked process did not answer"
            return ours.recv()

        deadline = time.monotonic() + 10
        while read_there() != (0, 0):  # until its own subscription is up and its copy kept
            assert time.monotonic() < deadline, "the forked process never read from its copies"
            time.sleep(0.01)
        for value in range(1, 31):
            cache.set("user", value, 60)
            assert until(lambda value=value: read_there()[0] == value)
        while read_there() != (30, 0):  # and copies serve it again once nothing changes
            assert time.monotonic() < deadline
    finally:
        ours.send(None)
        child.join(5)


def test_a_read_that_raced_a_change_does_not_keep_what_it_read():
    cache = near()
    cache.set("budgets", "old", 60)
    wait_until_trusted(cache)
    other = another_process(cache)
    copies = cache._cache.copies
    keep = copies.keep

    def keep_after_a_change(generation: int, found: dict[str, Any]) -> None:
        # Redis answered "old"; another process changes the key before this one keeps it.
        other.set(cache.make_and_validate_key("budgets"), "new", 60)
        deadline = time.monotonic() + 5
        while copies.generation == generation:  # its notice applied here
            assert time.monotonic() < deadline
            time.sleep(0.001)
        keep(generation, found)

    with mock.patch.object(copies, "keep", side_effect=keep_after_a_change):
        assert cache.get("budgets") == "old"  # right for the moment it was read
    assert cache.get("budgets") == "new"


@pytest.fixture
def held_copy() -> Iterator[tuple[Any, NearRedisCacheClient, str]]:
    """A near cache holding a copy of "token" = "alice", another process's client, and the key in Redis."""
    cache = near()
    cache.set("token", "alice", 60)
    wait_until_trusted(cache)
    assert cache.get("token") == "alice"
    yield cache, another_process(cache), cache.make_and_validate_key("token")


def test_a_notice_on_the_socket_counts_before_the_subscriber_reads_it(held_copy):
    cache, other, key = held_copy
    copies = cache._cache.copies
    stalled, resume = threading.Event(), threading.Event()
    wait = copies._wait

    def stall(waiting: Any) -> None:  # the subscriber thread not scheduled, as under a loaded GIL
        stalled.set()
        resume.wait(10)
        wait(waiting)

    with mock.patch.object(copies, "_wait", side_effect=stall):
        try:
            assert stalled.wait(5)
            other.set(key, "revoked", 60)
            socket_has_it = select.poll()
            socket_has_it.register(copies._fd, select.POLLIN)
            assert until(lambda: bool(socket_has_it.poll(0)))
            assert cache.get("token") == "revoked"  # not its copy: a notice is waiting
        finally:
            resume.set()


def test_a_notice_being_applied_counts_before_it_is(held_copy):
    cache, other, key = held_copy
    copies = cache._cache.copies
    applying, resume = threading.Event(), threading.Event()
    on_message = copies._on_message

    def slow(message: dict[str, Any]) -> None:  # read off the socket, not yet applied
        if message["type"] == "message":
            applying.set()
            resume.wait(10)
        on_message(message)

    with mock.patch.object(copies, "_on_message", side_effect=slow):
        try:
            other.set(key, "revoked", 60)
            assert applying.wait(5)
            assert cache.get("token") == "revoked"
        finally:
            resume.set()


def test_copies_are_dropped_when_the_subscription_is_lost(server, monkeypatch):
    monkeypatch.setattr(near_cache, "RECONNECT_SECONDS", 0.5)  # the change below falls in the gap
    cache = near()
    cache.set("token", "alice", 60)
    wait_until_trusted(cache)
    assert cache.get("token") == "alice"
    channel = cache._cache.copies.channel
    (subscriber,) = [c for c in server.client_list() if c["name"].startswith(channel)]

    server.client_kill_filter(_id=subscriber["id"])
    another_process(cache).set(cache.make_and_validate_key("token"), "revoked", 60)  # its notice is lost
    assert cache.get("token") == "revoked"  # read from Redis while unsubscribed
    wait_until_trusted(cache)
    assert cache.get("token") == "revoked"  # and the copies start empty when it is back


def test_copies_are_not_used_once_redis_goes_quiet(monkeypatch):
    monkeypatch.setattr(near_cache, "PING_SECONDS", 60.0)  # one ping at the start, then silence
    monkeypatch.setattr(near_cache, "LEASE_SECONDS", 0.5)
    cache = near()
    cache.set("agent", "helper", 60)
    wait_until_trusted(cache)
    assert cache.get("agent") == "helper"
    time.sleep(0.6)
    with redis_commands() as sends:
        assert cache.get("agent") == "helper"
    assert len(sends) == 1


def test_at_most_max_entries_copies_are_kept_the_oldest_dropped(monkeypatch):
    monkeypatch.setattr(near_cache, "MAX_ENTRIES", 3)
    cache = near()
    cache.set_many({f"k{n}": n for n in range(4)}, 60)
    wait_until_trusted(cache)
    for n in range(4):
        cache.get(f"k{n}")
    with redis_commands() as sends:
        assert [cache.get(f"k{n}") for n in (1, 2, 3)] == [1, 2, 3]
    assert len(sends) == 0
    with redis_commands() as sends:
        assert cache.get("k0") == 0
    assert len(sends) == 1


def add_once_gone_from_redis(cache: Any) -> None:
    # Deleted behind the caches' backs (no notice): add() only writes a key that is not there.
    redis.Redis.from_url(URL).delete(cache.make_and_validate_key("k"))
    assert cache.add("k", "new", 60)


# FLUSHDB empties the whole database: clear() has one of its own, which no other test uses.
CLEAR_URL = "redis://127.0.0.1:6379/12"


@pytest.mark.parametrize(
    ("write", "location"),
    [
        (lambda cache: cache.set("k", "new", 60), URL),
        (lambda cache: add_once_gone_from_redis(cache), URL),
        (lambda cache: cache.delete("k"), URL),
        (lambda cache: cache.delete_many(["k"]), URL),
        (lambda cache: cache.set_many({"k": "new"}, 60), URL),
        (lambda cache: cache.touch("k", 0), URL),
        (lambda cache: cache.incr("k"), URL),
        (lambda cache: cache.clear(), CLEAR_URL),
    ],
    ids=["set", "add", "delete", "delete_many", "set_many", "touch", "incr", "clear"],
)
def test_every_write_is_announced_to_the_other_processes(write, location):
    cache = near(location=location)
    reader = another_process(cache)
    cache.set("k", 1, 60)
    key = cache.make_and_validate_key("k")
    deadline = time.monotonic() + 10
    while not reader.copies.trusted():
        assert time.monotonic() < deadline, "the other process's subscription was not confirmed"
        time.sleep(0.01)
    assert reader.get(key, None) == 1
    with redis_commands() as sends:
        assert reader.get(key, None) == 1  # from its copies
    assert len(sends) == 0

    write(cache)
    assert until(lambda: reader.get(key, None) != 1)


def test_peek_answers_only_from_the_copies_and_only_what_they_hold(no_pongs):
    """peek_many (the run admission on the event loop): what get_many would give, from the copies and
    without I/O, or None: a key not copied, copies not trusted, or a copy dropped by a change."""
    cache = quiet(near())
    cache.set_many({"token": ("user", 1), "agent": "helper"}, 60)
    wait_until_trusted(cache)
    assert near_cache.peek_many(cache, ["token"]) is None  # not read yet: not copied
    cache.get_many(["token", "agent"])
    with redis_commands() as sends:
        found = near_cache.peek_many(cache, ["token", "agent"])
        partial = near_cache.peek_many(cache, ["token", "absent"])
    with mock.patch.object(cache._cache.copies, "trusted", return_value=False):
        untrusted = near_cache.peek_many(cache, ["token"])
    cache.set("agent", "renamed", 60)  # a change here (another process's notices: tested above, for get)
    dropped = near_cache.peek_many(cache, ["agent"]) is None

    assert sends == []
    assert found == {"token": ("user", 1), "agent": "helper"}
    assert (partial, untrusted) == (None, None)
    assert dropped


def test_peek_reads_a_process_memory_cache_and_nothing_else():
    locmem = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "peek"}
    memory = CacheHandler({"m": locmem})["m"]
    memory.set("k", 1)
    dummy = CacheHandler({"d": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}})["d"]

    assert near_cache.peek_many(memory, ["k"]) == {"k": 1}
    assert near_cache.peek_many(memory, ["k", "absent"]) is None
    assert near_cache.peek_many(dummy, ["k"]) is None
