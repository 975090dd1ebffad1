"""Settings, all from the environment (django-environ). Defaults are the embedded ones: SQLite and the
local model, so `make run` works on a machine with no keys and no services."""

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from config.db_pool import prepare_threshold

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# ENV_FILE: which .env to read ("" reads none). The process environment always wins over the file.
ENV_FILE = os.environ.get("ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE:
    environ.Env.read_env(ENV_FILE, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# No built-in key outside DEBUG: a key everyone can read in the source signs everyone's sessions and password
# reset links. `make run` writes a random one to .env on its first run (config/launch.py).
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment or in .env (`make run` writes a random one "
            "there on its first run), e.g. SECRET_KEY=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(50))'). Only DEBUG=true runs without one."
        )
    SECRET_KEY = "django-insecure-debug-only-key-never-used-without-DEBUG"  # check --deploy flags this prefix
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS (README: Production settings) --------------------------------------------------------------
# On by default whenever DEBUG is off: the server is meant to be reached over HTTPS (directly or through a
# TLS-terminating proxy listed in TRUSTED_PROXIES). `make run` serves plain HTTP on 127.0.0.1 and switches
# the first three off for its own process only (Makefile).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# Browsers honour HSTS only from an HTTPS response, so it never locks out a plain-HTTP development server.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)

# --- Proxies and logins (README: Logins and lockout, Running behind a proxy) ------------------------------
# Addresses or networks (CIDR) of the reverse proxies in front of the server. X-Forwarded-For is believed
# only from these; from anyone else the connecting address is the client. Empty: no proxy is trusted.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_LOCKOUT_SECONDS = env.int("LOGIN_LOCKOUT_SECONDS", default=900)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "axes",
    "apps.security",
    "apps.platforms",
    "apps.agents",
    "apps.console",
]

# Django's middleware, subclassed so that under ASGI their hooks run on the event loop instead of a thread
# hop each (config/middleware.py: thirteen hops per request otherwise). SHIPPED_MIDDLEWARE is the list as
# shipped, which apps/agents/api/execute_route.py reproduces for the requests it answers; change MIDDLEWARE,
# never this, and Django answers every request.
SHIPPED_MIDDLEWARE = (
    "config.middleware.SecurityMiddleware",
    # Serves admin/console static files under uvicorn without a separate web server.
    "apps.agents.api.middleware.AsyncWhiteNoiseMiddleware",
    "config.middleware.SessionMiddleware",
    "config.middleware.CommonMiddleware",
    "config.middleware.CsrfViewMiddleware",
    "config.middleware.AuthenticationMiddleware",
    "config.middleware.MessageMiddleware",
    "config.middleware.XFrameOptionsMiddleware",
    # Turns a request that hit a login lockout into the lockout answer (apps/security/lockout.py). Async
    # capable: no thread hop unless a lockout is being answered.
    "axes.middleware.AxesMiddleware",
)
MIDDLEWARE = list(SHIPPED_MIDDLEWARE)

# django-axes first: it refuses any login (even with the right password) while the username or the client
# address is locked out, then Django's own backend checks the password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Django's "middleware missing" deploy warnings are false for our subclasses of its middleware; the checks
# in apps/security/checks.py run Django's middleware checks against our classes and report a middleware that
# is really missing as agentplatform.W001-W003.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A commit costs ~20 ms with the default fsync on these disks; WAL + synchronous=NORMAL is durable
    # across process crashes and an order of magnitude cheaper. IMMEDIATE avoids "database is locked"
    # when a read transaction later wants to write.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file, not memory, so a live uvicorn server and a real Celery worker see the same rows
    # (they are handed its path). One file per test process, so two suites running at once never share one.
    DATABASES["default"]["TEST"] = {
        "NAME": env("TEST_SQLITE_PATH", default=str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3"))
    }
else:
    # 0, not 60: under uvicorn each request's ORM work runs in a thread of its own, so a kept connection is
    # never reused; every request opened a new one and left it open until garbage collection (97 open after
    # 180 requests; "too many clients" under `make bench`). 0 closes it at the end of the request, which with
    # the pool below means giving it back to the pool (Django refuses a pool with CONN_MAX_AGE != 0).
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    if "postgresql" in DATABASES["default"]["ENGINE"]:
        # The hot path's statements (a run's INSERT, its budget holds and settlements, its final UPDATE:
        # apps/agents/services/db.py execute_statements) are bound on the server and, once used this many
        # times on a connection, prepared there: PostgreSQL stops parsing and planning them on every run.
        # Django's own queries are bound on the client and never prepared. "off" for a pooler in transaction
        # mode in front of PostgreSQL that cannot keep prepared statements (PgBouncer before 1.21).
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = prepare_threshold(
            env.str("DB_PREPARE_THRESHOLD", default="5")
        )
    # PostgreSQL connection pool (Django's native one, psycopg_pool), per server or worker process: at most
    # DB_POOL_MAX_SIZE connections, however many requests are open, because a run gives its connection back
    # after each unit of database work (apps/agents/services/db.py) instead of holding it while it waits on
    # the provider. A request that finds every connection busy for DB_POOL_TIMEOUT seconds is answered
    # 503 `overloaded` with Retry-After. README (Scaling out): max size x processes < max_connections.
    # DB_POOL_MAX_SIZE=0 switches the pool off (a connection per request, held for the whole request).
    DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=20)
    if DB_POOL_MAX_SIZE > 0:
        if DATABASES["default"]["CONN_MAX_AGE"] != 0:
            raise ImproperlyConfigured(
                "CONN_MAX_AGE must be 0 with the connection pool (or DB_POOL_MAX_SIZE=0)."
            )
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": min(env.int("DB_POOL_MIN_SIZE", default=2), DB_POOL_MAX_SIZE),
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
            # Health checks only of a connection left idle for a while (config/db_pool.py), not a round trip
            # on every checkout as Django's CONN_HEALTH_CHECKS makes them: our backend sets that check and
            # notes when each connection comes back. No `reset` callback: with one, psycopg_pool hands every
            # returned connection to its worker thread instead of taking it back at once.
        }
        if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
            DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
            DATABASES["default"]["ENGINE"] = "config.postgresql"
    # A run's final write is sent from the event loop over psycopg's async connection instead of a unit of
    # database work in a thread (apps/agents/services/loop_writes.py): at most this many such
    # connections per event loop, beside the pool's. 0: every write is a unit. Only with the pool.
    DB_ASYNC_WRITERS = env.int("DB_ASYNC_WRITERS", default=4) if DB_POOL_MAX_SIZE > 0 else 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- API --------------------------------------------------------------------------------------------
# Seconds a token -> user lookup is cached (api/authentication.py); 0 turns the cache off.
# Run requests (execute and the other async actions) whose admission (the DRF half: auth, throttles,
# validation, the agent) runs at once per process; the rest wait their turn on the event loop
# (apps/agents/services/db.py, admission_slot). 0: no limit.
RUN_ADMISSIONS = env.int("RUN_ADMISSIONS", default=4)
# Plain synchronous run requests answered without Django's handler and DRF's dispatch, through the same
# steps (apps/agents/api/execute_route.py); false: Django answers every request.
EXECUTE_ROUTE = env.bool("EXECUTE_ROUTE", default=True)
AUTH_CACHE_SECONDS = env.int("AUTH_CACHE_SECONDS", default=60)
# Seconds the agent a run request names is cached (apps/agents/agent_cache.py); 0 turns the cache off.
AGENT_CACHE_SECONDS = env.int("AGENT_CACHE_SECONDS", default=60)
# Seconds the budgets that apply to a (user, agent) are cached (apps/agents/services/budget_cache.py); a change
# is seen at once with REDIS_URL set, after this long by other processes without it. 0 turns the cache off.
BUDGET_CACHE_SECONDS = env.int("BUDGET_CACHE_SECONDS", default=30)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.agents.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only, with a bounded nesting depth (MAX_JSON_DEPTH): a deep body is a 400, never a 500.
    "DEFAULT_PARSER_CLASSES": ["apps.agents.api.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.agents.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "user": env("THROTTLE_USER_RATE", default="6000/min"),
        "execute": env("THROTTLE_EXECUTE_RATE", default="600/min"),
        "anon": env("THROTTLE_ANON_RATE", default="60/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Execution Platform API",
    "DESCRIPTION": "Define LLM agents as records and run them synchronously, streamed (SSE) or in the background.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # 3.1: its schemas are JSON Schema 2020-12, which can say what an event stream's `data:` lines hold
    # (contentMediaType, contentSchema; apps/agents/api/schema_events.py).
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.agents.api.schema.postprocess",
    ],
}

# Request limits (bytes / characters / items). Bigger bodies get a 400 before any work is done.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BYTES", default=1_000_000)
MAX_TASK_CHARS = env.int("MAX_TASK_CHARS", default=100_000)
MAX_HISTORY_MESSAGES = env.int("MAX_HISTORY_MESSAGES", default=200)
# Caps on a user's JSON Schema (agent output_schema; apps/agents/engine/schema_policy.py): its size, nesting
# depth, properties declared in all, the largest minLength/maxItems/... value, the longest pattern, and how
# long validating one answer may take (in a worker thread) before the run fails with invalid_output.
SCHEMA_MAX_BYTES = env.int("SCHEMA_MAX_BYTES", default=32_768)
SCHEMA_MAX_DEPTH = env.int("SCHEMA_MAX_DEPTH", default=24)
SCHEMA_MAX_PROPERTIES = env.int("SCHEMA_MAX_PROPERTIES", default=256)
SCHEMA_MAX_COUNT = env.int("SCHEMA_MAX_COUNT", default=4_096)
SCHEMA_MAX_PATTERN_CHARS = env.int("SCHEMA_MAX_PATTERN_CHARS", default=512)
SCHEMA_VALIDATION_SECONDS = env.float("SCHEMA_VALIDATION_SECONDS", default=2.0)
# Deepest nesting a JSON request body may have (every endpoint): deeper answers 400, not a RecursionError.
MAX_JSON_DEPTH = env.int("MAX_JSON_DEPTH", default=64)

# --- Platforms (provider keys only ever come from the environment) -------------------------------------
OPENAI_API_KEY = env("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env("OPENAI_BASE_URL", default="")
OPENAI_DEFAULT_MODEL = env("OPENAI_DEFAULT_MODEL", default="gpt-4o-mini")
ANTHROPIC_API_KEY = env("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env("ANTHROPIC_BASE_URL", default="")
ANTHROPIC_DEFAULT_MODEL = env("ANTHROPIC_DEFAULT_MODEL", default="claude-3-5-haiku-latest")
GEMINI_API_KEY = env("GEMINI_API_KEY", default="")
GEMINI_BASE_URL = env("GEMINI_BASE_URL", default="")
GEMINI_DEFAULT_MODEL = env("GEMINI_DEFAULT_MODEL", default="gemini-2.0-flash")
LOCAL_ENABLED = env.bool("LOCAL_ENABLED", default=True)
LOCAL_MODEL_PATH = env("LOCAL_MODEL_PATH", default="")
LOCAL_DEFAULT_MODEL = env("LOCAL_DEFAULT_MODEL", default="smollm2-135m-instruct")
# SmolLM2 supports 8192; 4096 leaves room for a structured agent's schema plus one re-ask.
LOCAL_CONTEXT_TOKENS = env.int("LOCAL_CONTEXT_TOKENS", default=4096)
# 1 thread: as fast as 2 for a 135M model on 2 cores, and far steadier when the other core is busy (bench/local.py).
LOCAL_THREADS = env.int("LOCAL_THREADS", default=1)
# Order in which platforms are tried after the agent's preferred one. Unconfigured ones are skipped.
PLATFORM_FALLBACK_ORDER = env.list(
    "PLATFORM_FALLBACK_ORDER", default=["openai", "anthropic", "gemini", "local"]
)
# Platform used by agents whose preferred_platform is empty: the first configured one in the order above.
DEFAULT_PLATFORM = env("DEFAULT_PLATFORM", default="")
PLATFORM_COOLDOWN_SECONDS = env.float("PLATFORM_COOLDOWN_SECONDS", default=30.0)
PLATFORM_COOLDOWN_AFTER_FAILURES = env.int("PLATFORM_COOLDOWN_AFTER_FAILURES", default=3)
PLATFORM_REQUEST_TIMEOUT = env.float("PLATFORM_REQUEST_TIMEOUT", default=60.0)
RETRY_BASE_DELAY = env.float("RETRY_BASE_DELAY", default=0.5)
RETRY_MAX_DELAY = env.float("RETRY_MAX_DELAY", default=20.0)
# JSON object {"provider:model": {"input": "per-million USD", "output": "per-million USD"}}.
MODEL_PRICES = env.json("MODEL_PRICES", default={})

# --- Tools ---------------------------------------------------------------------------------------------------
# Modules imported at startup whose @agent_tool functions agents may allowlist (comma-separated).
AGENT_TOOL_MODULES = env.list("AGENT_TOOL_MODULES", default=[])
# --- Spend control (README "Budgets and limits") ---------------------------------------------------------
# A budget every user gets unless they have one of their own: JSON {"usd": "5", "tokens": 2000000,
# "period": "day"|"month"|"total", "max_concurrent": 4}, any key optional. Empty: no default budget.
BUDGET_DEFAULT_USER = env.json("BUDGET_DEFAULT_USER", default={})
# The largest max_tokens an agent (or a /v1/chat/completions request) may ask for; also the max_tokens sent
# when a budget applies and the agent sets none, so that every attempt's reservation is a true upper bound.
MAX_OUTPUT_TOKENS = env.int("MAX_OUTPUT_TOKENS", default=32_768)
# JSON {"platform": ["model", ...]}: the models a user may pick per platform. A platform not listed: any.
MODEL_ALLOWLIST = env.json("MODEL_ALLOWLIST", default={})
# Ceilings for agents that non-staff users create or run (staff agents are not capped).
NON_STAFF_MAX_RETRIES = env.int("NON_STAFF_MAX_RETRIES", default=5)
NON_STAFF_MAX_TIMEOUT_SECONDS = env.int("NON_STAFF_MAX_TIMEOUT_SECONDS", default=600)

# --- Background runs -------------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="")
REDIS_URL = env("REDIS_URL", default="")
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
EXECUTION_HEARTBEAT_SECONDS = env.float("EXECUTION_HEARTBEAT_SECONDS", default=5.0)
# How often a process checks its running executions' rows for a cancel request made in another process
# (one query for all of them: apps/agents/services/run_watcher.py).
EXECUTION_CANCEL_POLL_SECONDS = env.float("EXECUTION_CANCEL_POLL_SECONDS", default=1.0)
# A `: ping` comment on every event stream (native SSE and /v1 chunks) after this many idle seconds, so
# proxies keep a slow run's stream open (ARCHITECTURE.md: 15 s).
SSE_PING_SECONDS = env.float("SSE_PING_SECONDS", default=15.0)
# A pending row not picked up within this many seconds is failed by the reaper.
PENDING_DEADLINE_SECONDS = env.float("PENDING_DEADLINE_SECONDS", default=3600.0)
# A background row that no worker started within this many seconds of being queued is sent again by the
# reaper (its message was lost, or is held by a dead worker); after PENDING_MAX_REDISPATCHES re-sends that
# still did not start it, it fails `worker_lost`. See apps/agents/services/dispatch.py.
PENDING_REDISPATCH_SECONDS = env.float("PENDING_REDISPATCH_SECONDS", default=60.0)
PENDING_MAX_REDISPATCHES = env.int("PENDING_MAX_REDISPATCHES", default=3)
# Queues: background runs, and the reaper's passes on a queue of their own so they never wait behind a
# backlog of runs. `celery worker` without -Q consumes both.
RUNS_QUEUE = env("RUNS_QUEUE", default="celery")
MAINTENANCE_QUEUE = env("MAINTENANCE_QUEUE", default="maintenance")
# A background run whose heartbeat is older than this lost its worker: the reaper fails it (worker_lost).
EXECUTION_STALE_SECONDS = env.float("EXECUTION_STALE_SECONDS", default=30.0)
# Longer than any run can last (Agent.timeout_seconds <= 3600 plus grace): a message is handed to another
# worker only after this long without an ack, so a slow run is never started twice (config/celery.py).
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=7200)
# Prefix of every Redis key (broker and events), so one Redis can serve several deployments or test runs.
REDIS_KEY_PREFIX = env("REDIS_KEY_PREFIX", default="agentplatform:")
# How long a background run's events stay readable at GET /api/v1/executions/{id}/events/.
EVENTS_TTL_SECONDS = env.int("EVENTS_TTL_SECONDS", default=86400)
REAPER_INTERVAL_SECONDS = env.float("REAPER_INTERVAL_SECONDS", default=30.0)
# How often finished executions are rolled up into the per-agent hourly stats (services/stats_rollup.py).
STATS_ROLLUP_SECONDS = env.float("STATS_ROLLUP_SECONDS", default=60.0)

# --- Login lockout (django-axes; README: Logins and lockout) -------------------------------------------------
# Every login path (API token, console, admin) goes through django.contrib.auth.authenticate() with the
# request, where axes counts failures per username AND per client address: either reaching
# LOGIN_FAILURE_LIMIT locks that key for LOGIN_LOCKOUT_SECONDS, and every further failure restarts the wait.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_SECONDS)
# Not reset by a success: a success resets the counters of its own username and address, so an attacker
# could log into their own account between guesses and clear the address count (and, in the database
# handler, the victim's rows from that address too).
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "apps.security.client_address.client_ip"
AXES_LOCKOUT_CALLABLE = "apps.security.lockout.lockout_response"
AXES_CLIENT_STR_CALLABLE = "apps.security.lockout.client_str"
AXES_DISABLE_ACCESS_LOG = True  # successful logins are not recorded: only failures count
AXES_ENABLE_ADMIN = True  # staff see and delete attempts in the admin (or `manage.py axes_reset_username`)
# Counters shared by every server process: in Redis when REDIS_URL is set (Django's RedisCache, with one
# connection pool per process: config/redis_cache.py), else in the database (one table, shared by every
# process that uses it).
if REDIS_URL:
    AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
    AXES_CACHE = "logins"
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "logins": {
            "BACKEND": "config.redis_cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}logins",
        },
        # Token -> user lookups (apps/agents/api/authentication.py): shared, so a revoked token or a
        # deactivated user is refused at once by every server process, not only the one that saw it.
        "auth": {
            # Read on every run request, changed rarely: each process keeps what it read until any process
            # changes it (config/near_cache.py). NEAR_CACHE=false reads Redis every time.
            "BACKEND": "config.near_cache.NearRedisCache"
            if env.bool("NEAR_CACHE", default=True)
            else "config.redis_cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}auth",
        },
        # Rate-limit counters (apps/agents/api/throttling.py): shared, so N server processes allow a user
        # the configured rate, not N times it.
        "throttle": {
            "BACKEND": "config.redis_cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}throttle",
        },
    }
else:
    AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
    # One process's memory: with several server processes and no Redis, a revocation reaches the other
    # processes' caches after AUTH_CACHE_SECONDS, and each process counts rate limits on its own.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "auth": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "auth"},
        "throttle": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"},
    }

# --- Demo user printed by `make run` ------------------------------------------------------------------------
DEMO_USER = env("DEMO_USER", default="demo")
DEMO_PASSWORD = env("DEMO_PASSWORD", default="demo-password")

# Bearer token a Prometheus server may scrape GET /metrics with (empty: staff users only).
METRICS_TOKEN = env("METRICS_TOKEN", default="")

LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"execution": {"()": "config.logging.ExecutionIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [execution=%(execution_id)s] %(message)s"}
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["execution"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
