"""Production defaults: no start without SECRET_KEY (DEBUG off), `manage.py check --deploy` clean and able to
see our middleware, `make run`'s .env key, the demo user a plain user.

The subprocesses get a production environment built from scratch (nothing from the test run's), read no
.env (ENV_FILE empty) and never touch a database.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.security.checks import check_middleware_as_subclassed, middleware_as_django_sees_it
from config import launch, serve

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_KEY = "x7Qm2R-production-key-for-the-test-9vL0sT_aZ3pW8kN1bY6cH4dF5gJ7"


def production_env(**overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "ENV_FILE": "",
        "DATABASE_URL": "sqlite:////nonexistent-dir/never-opened.sqlite3",
        "ALLOWED_HOSTS": "agents.example.com",
        "LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------------------- SECRET_KEY
def test_a_production_start_without_secret_key_fails_with_a_clear_message() -> None:
    for command in (["-c", "import django; django.setup()"], ["manage.py", "check"]):
        done = subprocess.run(
            [sys.executable, *command],
            cwd=REPO,
            env=production_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert "django.core.exceptions.ImproperlyConfigured: SECRET_KEY is not set." in done.stderr
        assert "make run" in done.stderr  # says how to get one


def test_debug_runs_without_a_key_and_check_deploy_flags_it() -> None:
    done = manage("check", "--deploy", env=production_env(DEBUG="true"))

    assert "security.W009" in done.stderr + done.stdout  # the debug-only key is flagged as insecure
    assert "security.W018" in done.stderr + done.stdout  # and DEBUG itself


# ------------------------------------------------------------------------------- check --deploy
def test_check_deploy_with_a_production_environment_reports_nothing() -> None:
    done = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=production_env(SECRET_KEY=PRODUCTION_KEY)
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr and "?:" not in done.stdout + done.stderr


def test_check_deploy_runs_the_https_checks_django_skipped_for_our_middleware() -> None:
    """Django found no SecurityMiddleware (ours subclasses it), so an HSTS or SSL redirect switched off passed
    unnoticed; now they are reported, with Django's own ids."""
    env = production_env(SECRET_KEY=PRODUCTION_KEY, SECURE_HSTS_SECONDS="0", SECURE_SSL_REDIRECT="false")

    done = manage("check", "--deploy", env=env)

    output = done.stdout + done.stderr
    assert "(security.W004)" in output and "(security.W008)" in output
    assert "security.W001" not in output  # the false "SecurityMiddleware missing" stays silenced


def test_a_really_missing_middleware_is_still_reported(settings) -> None:
    settings.MIDDLEWARE = [
        path
        for path in settings.MIDDLEWARE
        if path not in ("config.middleware.SecurityMiddleware", "config.middleware.CsrfViewMiddleware")
    ]

    ids = {message.id for message in check_middleware_as_subclassed(None)}

    assert {"agentplatform.W001", "agentplatform.W003"} <= ids
    assert "agentplatform.W002" not in ids  # X-Frame-Options is still there


def test_only_real_subclasses_stand_for_djangos_middleware() -> None:
    seen = middleware_as_django_sees_it(
        ["config.middleware.SessionMiddleware", "config.middleware.CommonMiddleware", "no.such.Module"]
    )
    assert seen == [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "config.middleware.CommonMiddleware",  # not one the security checks look for
        "no.such.Module",
    ]


# ------------------------------------------------------------------------------- make run's .env
def test_make_run_writes_a_random_secret_key_once(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"

    assert launch.ensure_secret_key(env_file) is True
    first = env_file.read_text()
    assert launch.ensure_secret_key(env_file) is False  # a second run keeps it
    assert env_file.read_text() == first
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    (line,) = [line for line in first.splitlines() if line.startswith("SECRET_KEY=")]
    key = line.removeprefix("SECRET_KEY=")
    assert len(key) >= 50 and len(set(key)) > 5 and not set(key) & set("$#'\" ")
    other = tmp_path / "other.env"
    launch.ensure_secret_key(other)
    assert other.read_text() != first  # random, not a constant

    # The settings start with it, and check --deploy accepts it.
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(ENV_FILE=str(env_file)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_run_keeps_an_existing_key_and_fills_an_empty_one(tmp_path: Path) -> None:
    existing = tmp_path / "existing.env"
    existing.write_text("DEBUG=false\nSECRET_KEY='my-own-key'\n")
    assert launch.ensure_secret_key(existing) is False
    assert existing.read_text() == "DEBUG=false\nSECRET_KEY='my-own-key'\n"

    empty = tmp_path / "empty.env"
    empty.write_text("SECRET_KEY=\nOPENAI_API_KEY=sk-test\n")
    assert launch.ensure_secret_key(empty) is True
    lines = empty.read_text().splitlines()
    assert lines[0].startswith("SECRET_KEY=") and len(lines[0]) > 60 and lines[1] == "OPENAI_API_KEY=sk-test"


def test_make_run_gives_uvicorn_no_proxy_trust_by_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ENV_FILE", str(tmp_path / ".env"))
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    args = argparse.Namespace(host="127.0.0.1", port=8000, workers=1, log_level="warning")
    config = serve.config_for(args)  # config/serve.py, what `make run` starts
    assert config.proxy_headers is False

    (tmp_path / ".env").write_text("TRUSTED_PROXIES=10.0.0.5, 10.1.0.0/16\n")
    config = serve.config_for(args)
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "10.0.0.5,10.1.0.0/16"
    monkeypatch.setenv("TRUSTED_PROXIES", "not-an-address")  # the environment wins over .env
    with pytest.raises(ValueError):
        launch.trusted_proxies()
    assert serve.main(["--port", "8000"]) == 2  # refused before anything starts


# ------------------------------------------------------------------------------- the demo user
@pytest.mark.django_db
def test_the_demo_user_is_a_plain_user(settings) -> None:
    settings.DEMO_USER, settings.DEMO_PASSWORD = "demo", "demo-pass-123"
    User = get_user_model()

    call_command("create_demo_user", stdout=io.StringIO())
    demo = User.objects.get(username="demo")
    assert not demo.is_staff and not demo.is_superuser

    # One made an administrator by an earlier version is demoted: its password is public.
    User.objects.filter(pk=demo.pk).update(is_staff=True, is_superuser=True)
    out = io.StringIO()
    call_command("create_demo_user", stdout=out)
    demo.refresh_from_db()
    assert not demo.is_staff and not demo.is_superuser
    assert "/admin/" not in out.getvalue()


def test_rate_limits_are_counted_in_redis_when_it_is_configured() -> None:
    # In each process's memory, N server processes would allow a user N times the configured rate.
    show = "from django.conf import settings; print(settings.CACHES['throttle']['BACKEND'])"
    with_redis = manage(
        "shell", "-c", show, env=production_env(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0")
    )
    without = manage("shell", "-c", show, env=production_env(SECRET_KEY="x", REDIS_URL=""))
    assert with_redis.stdout.splitlines()[-1] == "config.redis_cache.SharedRedisCache", with_redis.stderr
    assert without.stdout.splitlines()[-1] == "django.core.cache.backends.locmem.LocMemCache", without.stderr
