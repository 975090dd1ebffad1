"""Settings, all from the environment (django-environ). Defaults are the embedded ones: SQLite and the
local model, so `make run` works on a machine with no keys and no services."""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="insecure-dev-key-change-me-in-production-0123456789abcdef")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

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
    "apps.platforms",
    "apps.agents",
    "apps.console",
]

# Django's middleware, subclassed so that under ASGI their hooks run on the event loop instead of a thread
# hop each (config/middleware.py: thirteen hops per request otherwise).
MIDDLEWARE = [
    "config.middleware.SecurityMiddleware",
    # Serves admin/console static files under uvicorn without a separate web server.
    "apps.agents.api.middleware.AsyncWhiteNoiseMiddleware",
    "config.middleware.SessionMiddleware",
    "config.middleware.CommonMiddleware",
    "config.middleware.CsrfViewMiddleware",
    "config.middleware.AuthenticationMiddleware",
    "config.middleware.MessageMiddleware",
    "config.middleware.XFrameOptionsMiddleware",
]

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
    # 180 requests; "too many clients" under `make bench`). 0 closes it at the end of the request.
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

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
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
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

# --- Background runs -------------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="")
REDIS_URL = env("REDIS_URL", default="")
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
EXECUTION_HEARTBEAT_SECONDS = env.float("EXECUTION_HEARTBEAT_SECONDS", default=5.0)
# A `: ping` comment on every event stream (native SSE and /v1 chunks) after this many idle seconds, so
# proxies keep a slow run's stream open (ARCHITECTURE.md: 15 s).
SSE_PING_SECONDS = env.float("SSE_PING_SECONDS", default=15.0)
# A pending row not picked up within this many seconds is failed by the reaper.
PENDING_DEADLINE_SECONDS = env.float("PENDING_DEADLINE_SECONDS", default=3600.0)
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
