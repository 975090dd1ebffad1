"""What a login costs the server, before and during a lockout: POST /api/v1/auth/token/ latency.

    .venv/bin/python bench/logins.py                    # PostgreSQL database bench_logins (DATABASE_URL overrides)
    .venv/bin/python bench/logins.py --requests 40

The API runs as `uvicorn config.asgi:application` in its own process (one worker, as `make run`), with
Django's production password hasher (PBKDF2); this process is the client, one request at a time. Failures
are counted in the database (no REDIS_URL), as with the default settings.

- "right password": a token is issued (200);
- "wrong password, counted": a failure below the limit (401), from a server whose limit is out of reach;
- "locked out": after LOGIN_FAILURE_LIMIT failures from this address, wrong and right passwords alike (429):
  django-axes refuses them before any password hash is computed, which is why an attacker's flood stops
  costing the server a PBKDF2 hash per try once it is locked out.

Prints a table and writes bench/results/logins.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import time
from collections import Counter

import _root  # noqa: F401 - the repository root on sys.path (bench/_root.py)

from bench._django import RESULTS, ROOT, percentile, setup

URL = setup("bench_logins")

import httpx  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402

USERNAME, PASSWORD = "bench-login", "bench-login-password-1"
TOKEN_PATH = "/api/v1/auth/token/"
LOGS = RESULTS / "logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(failure_limit: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "DATABASE_URL": URL,
        "DEBUG": "false",
        "LOG_LEVEL": "ERROR",  # every failure is a WARNING line; the bench measures, not logs
        "LOCAL_ENABLED": "false",
        "REDIS_URL": "",
        "CELERY_BROKER_URL": "",
        "LOGIN_FAILURE_LIMIT": str(failure_limit),
        "THROTTLE_ANON_RATE": "100000000/min",  # the per-address rate limit is not what is measured
        # Plain HTTP on 127.0.0.1, as `make run`.
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    port = free_port()
    command = [str(ROOT / ".venv" / "bin" / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning", "--no-proxy-headers"]
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / "logins-server.log").open("ab")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/health/", timeout=2).status_code in (200, 503):
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def reset_database() -> None:
    from axes.models import AccessAttempt

    AccessAttempt.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    user.set_password(PASSWORD)  # the production hasher (settings' default: PBKDF2)
    user.save()


def measure(client: httpx.Client, name: str, password: str, count: int, usernames: bool = False) -> dict:  # type: ignore[type-arg]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    for n in range(count):
        # A different unknown username per try keeps the per-username count out of the way where asked.
        username = f"nobody-{name[:5]}-{n}" if usernames else USERNAME
        started = time.perf_counter()
        response = client.post(TOKEN_PATH, json={"username": username, "password": password})
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status_code] += 1
    return {
        "scenario": name,
        "requests": count,
        "statuses": dict(statuses),
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    rows = []

    reset_database()
    process, base = start_server(failure_limit=1_000_000)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            client.post(TOKEN_PATH, json={"username": USERNAME, "password": PASSWORD})  # warm-up
            rows.append(measure(client, "right password", PASSWORD, args.requests))
            rows.append(measure(client, "wrong password, counted", "wrong", args.requests))
    finally:
        stop(process)

    reset_database()
    process, base = start_server(failure_limit=5)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            for n in range(5):  # reach the limit for this address
                client.post(TOKEN_PATH, json={"username": f"reach-{n}", "password": "wrong"})
            rows.append(measure(client, "locked out, wrong password", "wrong", args.requests, usernames=True))
            rows.append(measure(client, "locked out, right password", PASSWORD, args.requests))
    finally:
        stop(process)

    print(f"\nPOST {TOKEN_PATH}, one request at a time, PBKDF2, failures counted in {URL.split(':')[0]}")
    print(f"{'scenario':<30}{'requests':>9}{'statuses':>22}{'p50 ms':>10}{'p95 ms':>10}")
    for row in rows:
        statuses = ",".join(f"{code}x{n}" for code, n in sorted(row["statuses"].items()))
        print(
            f"{row['scenario']:<30}{row['requests']:>9}{statuses:>22}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "database": URL.split(":")[0],
        },
        "rows": rows,
    }
    (RESULTS / "logins.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'logins.json'}")


if __name__ == "__main__":
    main()
