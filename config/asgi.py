"""The ASGI application: Django's, with each request's sync thread taken from a pool instead of started anew.

Django runs each request in a ThreadSensitiveContext of its own, so that all the request's sync work (the
DRF view, each unit of database work) runs on one thread. asgiref starts that thread on the request's first
sync call and, when the request ends, starts a second thread only to join the first: two thread starts and a
join per request, about an eighth of the server's CPU on a run request (`bench/api.py --profile`). Here the
request's context is given an idle single-thread executor from a free list, which goes back to the list when
the request ends, as a WSGI server reuses its threads between requests. Django's request_finished handling
(closing or returning the database connection, in that thread) is unchanged. A task that outlives its
request (a shielded final write after the client went away) gets a thread of its own from asgiref, as
before, never the pooled one that a later request is using.

Django also checks the thread's database connections when a request starts (request_started:
close_old_connections, reset_queries), in a thread hop of its own that costs 120-230 us of CPU on every request
(about 3% of a run request's). When no database keeps connections between requests (CONN_MAX_AGE 0, the pool
included: Django refuses a pool otherwise), that check finds nothing to do under this handler: the request's
thread closed, or gave back to the pool, each of its connections at the end of its previous request
(request_finished, unchanged). So for this handler those two receivers are not called; every other sender (the
WSGI handler of runserver, the test client) still gets them. With persistent connections everything is Django's.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.core import signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does first

from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.db import close_old_connections, reset_queries  # noqa: E402

from apps.agents.services.db import connections_end_with_requests  # noqa: E402

#: Idle request threads kept for the next requests; more than this many idle ones are stopped.
IDLE_THREADS = 64


class RequestThreads:
    """A free list of single-thread executors, one lent to each request."""

    def __init__(self, idle: int = IDLE_THREADS) -> None:
        self._idle: list[ThreadPoolExecutor] = []
        self._most_idle = idle
        self._lock = threading.Lock()

    def lend(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self._most_idle:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)  # its thread ends once idle; nothing waits for it here


class LentThreadContext(ThreadSensitiveContext):
    """A request's ThreadSensitiveContext whose thread is lent by `threads` (see the module docstring).

    The executor is put where asgiref looks for the context's own, and taken away on exit before anything
    else can see it; a task of the request that runs sync code after that finds no executor for the context
    and gets a new one, as with Django's context."""

    def __init__(self, threads: RequestThreads) -> None:
        super().__init__()
        self._threads = threads
        self._lent: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> "LentThreadContext":
        await super().__aenter__()
        if self.token is not None:  # the outermost context (as Django's): this request's thread
            self._lent = self._threads.lend()
            SyncToAsync.context_to_thread_executor[self] = self._lent
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.token is None:
            return
        if SyncToAsync.context_to_thread_executor.get(self) is self._lent:
            del SyncToAsync.context_to_thread_executor[self]
        SyncToAsync.thread_sensitive_context.reset(self.token)
        self.token = None
        if self._lent is not None:
            self._threads.give_back(self._lent)
            self._lent = None


class PooledThreadsASGIHandler(ASGIHandler):
    threads = RequestThreads()

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with LentThreadContext(self.threads):
            await self.handle(scope, receive, send)


#: Django's request_started receivers that only look at the request thread's database connections.
CONNECTION_CHECKS = (reset_queries, close_old_connections)


def skip_start_checks_under_asgi() -> bool:
    """Keep request_started's connection checks for every sender but this handler (see the module docstring),
    when no database keeps connections between requests. Idempotent; True when the checks are skipped.

    Signals can be connected per sender but not "all senders but one", so the two receivers are taken off
    for all senders and put back for the WSGI handler (runserver). The test client connects its own around
    each request."""
    if not connections_end_with_requests():
        return False
    for receiver in CONNECTION_CHECKS:
        signals.request_started.disconnect(receiver)
        signals.request_started.connect(receiver, sender=WSGIHandler)
    return True


skip_start_checks_under_asgi()
django_application = PooledThreadsASGIHandler()

from apps.agents.api.execute_route import ExecuteRoute  # noqa: E402 - needs django.setup()

# Plain execute requests (a synchronous run, token, JSON) are answered without Django's handler, through the
# same steps, in a request thread lent as above; everything else is Django's (apps/agents/api/execute_route.py).
application = ExecuteRoute(django_application, lambda: LentThreadContext(PooledThreadsASGIHandler.threads))
