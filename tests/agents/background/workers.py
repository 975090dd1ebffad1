"""Real Celery worker processes for the background tests (and bench/workers.py).

A worker is `celery -A config worker` in its own process group, with the environment of a real deployment:
DATABASE_URL of the database the test process uses (the SQLite test file, or PostgreSQL's test_<name>), the
broker and events in Redis under a prefix of this session, and the fake provider servers' URLs and keys, so
its registry (built from settings) talks to the fakes over real HTTP. The broker is Redis by default, or
any other `broker_url` (RabbitMQ: events and cancel notices stay in Redis).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from django.db import connection

REPO = Path(__file__).resolve().parents[3]
CELERY = str(Path(sys.executable).with_name("celery"))


def database_url() -> str:
    """DATABASE_URL of the database this process is connected to (after pytest-django switched to the test
    database, so a worker sees the very rows the test writes)."""
    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(conf['NAME']).resolve()}"
    user = conf.get("USER") or "postgres"
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    host = conf.get("HOST") or "127.0.0.1"
    port = conf.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{conf['NAME']}"


class WorkerProcess:
    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, marker: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if marker in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.name} not ready after {limit} s:\n{self.log()}")

    def pool_processes(self) -> list[int]:
        """Pids of a prefork worker's pool processes (the children of its main process)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        """SIGKILL the whole worker (its process group): no shutdown, no ack, no final write."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # warm shutdown: finish the current task
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerFactory:
    def __init__(
        self, *, redis_url: str, prefix: str, log_dir: Path, env: dict[str, str], broker_url: str = ""
    ) -> None:
        self.redis_url = redis_url
        self.broker_url = broker_url or redis_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.base_env = env
        self.workers: list[WorkerProcess] = []
        self._shared: WorkerProcess | None = None

    def environment(self, **overrides: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            PYTHONPATH=str(REPO),
            DATABASE_URL=database_url(),
            CELERY_BROKER_URL=self.broker_url,
            REDIS_URL=self.redis_url,
            REDIS_KEY_PREFIX=self.prefix,
            LOCAL_ENABLED="false",
            LOG_LEVEL="INFO",
        )
        env.update(self.base_env)
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def start(
        self, *, pool: str = "prefork", concurrency: int = 2, prefetch_multiplier: int = 1, **env: Any
    ) -> WorkerProcess:
        name = f"bg-{uuid.uuid4().hex[:8]}"
        command = [
            CELERY,
            "-A",
            "config",
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--prefetch-multiplier={prefetch_multiplier}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{name}@%h",
        ]
        return self._spawn(name, command, "ready.", env)

    def start_beat(self, **env: Any) -> WorkerProcess:
        """`celery -A config beat` (what `make beat` runs), its schedule file in the log directory."""
        name = f"beat-{uuid.uuid4().hex[:8]}"
        schedule = self.log_dir / f"{name}-schedule"
        command = [CELERY, "-A", "config", "beat", "--loglevel=INFO", f"--schedule={schedule}"]
        return self._spawn(name, command, "beat: Starting", env)

    def _spawn(self, name: str, command: list[str], ready: str, env: dict[str, Any]) -> WorkerProcess:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.environment(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() reaches a prefork pool's children too
            )
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        worker.wait_ready(ready)
        return worker

    def shared(self) -> WorkerProcess:
        """The session's worker, started on first use (or again after `stop_shared`)."""
        if self._shared is None or self._shared.process.poll() is not None:
            self._shared = self.start()
        return self._shared

    def stop_shared(self) -> None:
        """For a test that needs to be the only one consuming (it starts and kills its own workers)."""
        if self._shared is not None:
            self._shared.stop()
            self._shared = None

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
