"""Settings for the test suite: the project's own (config/settings.py), with what a test run must state
explicitly now that production is the default (README: Production settings).

Set in the environment, not as attributes, so the subprocesses tests start (Celery workers, manage.py) get
them too; values already in the environment win. DEBUG stays off, as in production: a test key instead of
the refusal to start, and plain HTTP, which the test client, the live server and the browser tests speak.
The .env of a developer's checkout is not read: tests see the same settings on every machine.
"""

import os

for name, value in {
    "ENV_FILE": "",
    "SECRET_KEY": "tests-only-secret-key-tests-only-secret-key-tests-only-0123456789",
    "SECURE_SSL_REDIRECT": "false",
    "SESSION_COOKIE_SECURE": "false",
    "CSRF_COOKIE_SECURE": "false",
    # The in-process runner's maintenance loop (services/background.py), started by the first test that
    # queues a run without a broker, would otherwise reap and roll up every 30 s for the rest of the session,
    # in the executor thread every test's sync_to_async shares: under a later test it ended that test's rows
    # as lost, or failed inside a transaction and left the thread's connection in it. Tests run the reaper
    # and the rollup themselves when they mean to (and start beat with its own interval).
    "REAPER_INTERVAL_SECONDS": "3600",
}.items():
    os.environ.setdefault(name, value)

from config.settings import *  # noqa: E402, F403

# Token -> user lookups are cached per process in tests (in Redis a cached entry would outlive the test
# database it came from); tests/conftest.py empties the cache before each test.
CACHES["auth"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "auth"}  # noqa: F405
# Rate-limit counters likewise (tests/agents/api/conftest.py empties them before each API test).
CACHES["throttle"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"}  # noqa: F405
