"""Shared by the bench scripts (run outside pytest): a throwaway migrated database, the fake provider."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def setup(default_db: str) -> str:
    """Use DATABASE_URL if set, else PostgreSQL database `default_db` (created if missing). Returns the URL."""
    url = os.environ.get("DATABASE_URL") or f"postgres://postgres@127.0.0.1:5432/{default_db}"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if url.startswith("postgres"):
        name = url.rsplit("/", 1)[1]
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", f"CREATE DATABASE {name}"],
            capture_output=True,
            check=False,
        )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


def start_fake_provider() -> tuple[subprocess.Popen[str], str]:
    """The tests' FakeOpenAIServer on uvloop + httptools in its own process (bench/compare/fake.py), so it
    does not share the measuring process's GIL. Returns the process and its OpenAI base URL."""
    import json

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.compare.fake"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    port = json.loads(process.stdout.readline())["port"]
    return process, f"http://127.0.0.1:{port}/v1"
