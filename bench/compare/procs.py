"""Processes for the bench (project venv, standard library only): the separate bench venv, starting and
stopping servers, reading a process tree's CPU time and peak RSS from /proc, and what machine this is."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv-bench"))
REQUIREMENTS = ROOT / "bench" / "requirements-compare.txt"
LOGS = ROOT / "bench" / "results" / "logs"
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------- bench venv
def bench_python() -> Path:
    return BENCH_VENV / "bin" / "python"


def ensure_bench_venv() -> float:
    """Create .venv-bench and install the contenders once; never re-created when present. A stamp holding
    the requirements' text makes a changed requirements file install again (into the same venv).
    Returns the seconds spent (0.0 when it was ready)."""
    stamp = BENCH_VENV / ".bench-requirements"
    wanted = REQUIREMENTS.read_text()
    if bench_python().exists() and stamp.exists() and stamp.read_text() == wanted:
        return 0.0
    start = time.perf_counter()
    if not bench_python().exists():
        log(f"creating the bench venv {BENCH_VENV} (contenders stay out of the project venv)")
        # The interpreter the project venv was made from (not the venv's own python: no venv-in-venv).
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
    log("installing bench/requirements-compare.txt into the bench venv (first time: 1-3 minutes)")
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / "pip-install.log", "w") as out:
        done = subprocess.run(
            [
                str(bench_python()),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"bench venv install failed; see {LOGS / 'pip-install.log'}")
    stamp.write_text(wanted)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- processes
@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def launch(name: str, argv: list[str], env: dict[str, str], *, port: int, cwd: Path = ROOT) -> Server:
    """Start a server in its own process group, output to bench/results/logs/<name>.log; see wait_ready.
    `cwd`: the checkout whose code it runs (bench/ab.py's other revision), this one by default."""
    LOGS.mkdir(parents=True, exist_ok=True)
    out = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )
    return Server(name, process, f"http://127.0.0.1:{port}")


def wait_ready(server: Server, health: str, timeout: float) -> Server:
    """Wait until `health` answers anything below 500 (the server is stopped if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}; see {LOGS / server.name}.log"
            )
        try:
            with urllib.request.urlopen(server.url + health, timeout=2) as response:
                if response.status < 500:
                    return server
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    stop(server)
    raise RuntimeError(
        f"{server.name} did not answer {health} within {timeout:.0f}s; see {LOGS / server.name}.log"
    )


def start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    *,
    port: int,
    health: str,
    timeout: float,
    cwd: Path = ROOT,
) -> Server:
    return wait_ready(launch(name, argv, env, port=port, cwd=cwd), health, timeout)


def stop(server: Server) -> None:
    """SIGTERM the server's process group (only what we started), SIGKILL after 10 s."""
    if server.process.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=5)
    except ProcessLookupError:
        pass


def web_workers() -> int:
    """Server processes for our API and the LiteLLM proxy alike: WEB_CONCURRENCY, else one per core."""
    return max(1, int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_json(argv: list[str], env: dict[str, str], *, name: str, timeout: float = 300) -> dict[str, Any]:
    """Run a contender script; return the JSON of its `BENCH-RESULT` line (its other output goes to a log)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    (LOGS / f"{name}.log").write_bytes(done.stdout + b"\n--- stderr ---\n" + done.stderr)
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    raise RuntimeError(f"{name} printed no result (exit {done.returncode}); see {LOGS / (name + '.log')}")


# ---------------------------------------------------------------------------------------------- /proc
def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """{process: (its own user + system ticks, those of its exited children)} for pid and its descendants:
    one read of the tree, for cpu_seconds and cpu_by_process alike."""
    out = {}
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[member] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return out


def cpu_by_process(pid: int, ticks: dict[int, tuple[int, int]] | None = None) -> dict[int, float]:
    """{process: its own user + system CPU seconds} for pid and its descendants (a server's workers)."""
    return {member: own / TICKS for member, (own, _) in (ticks or cpu_ticks(pid)).items()}


def cpu_seconds(pid: int, ticks: dict[int, tuple[int, int]] | None = None) -> float:
    """User + system CPU of a process tree (all threads), in seconds, including children that have exited
    (cutime/cstime): a PostgreSQL backend that served one connection and quit still counts."""
    return sum(own + exited for own, exited in (ticks or cpu_ticks(pid)).values()) / TICKS


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine since boot (/proc/stat; iowait counts as idle)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) summed over a process tree, in MiB."""
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


# ---------------------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    pg = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW server_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg or "unknown",
        # Others may share the machine: a load average well above 0 at the start or end means noisy numbers.
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "web_workers": web_workers(),
    }


def start_fake() -> Server:
    """bench/compare/fake.py in the project venv; it prints {"port": N} once it accepts connections."""
    import select

    LOGS.mkdir(parents=True, exist_ok=True)
    errors = open(LOGS / "fake.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "bench.compare.fake"],
        stdout=subprocess.PIPE,
        stderr=errors,
        cwd=ROOT,
        start_new_session=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    if not ready:
        raise RuntimeError("the fake server did not start within 30 s")
    port = json.loads(process.stdout.readline())["port"]
    return Server("fake", process, f"http://127.0.0.1:{port}")


def postmaster_pid() -> int | None:
    """The local PostgreSQL server's main process (its children are the backends doing our queries)."""
    for pidfile in Path("/var/lib/postgresql").glob("*/main/postmaster.pid"):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    if Path(f"/proc/{ppid}/comm").read_text().strip() != "postgres":
                        return int(entry.name)
            except OSError:
                continue
    return None


class Worker:
    """A contender process driven over stdin/stdout (bench/compare/common.serve)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - closed in finish()
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )

    def _answer(self, timeout: float) -> dict[str, Any]:
        import select

        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, left))
            if not ready:
                raise RuntimeError(
                    f"{self.name}: no answer within {timeout:.0f} s; see {LOGS / self.name}.log"
                )
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited ({self.process.wait()}); see {LOGS / self.name}.log")
            if line.startswith(b"BENCH-RESULT "):
                return json.loads(line[len(b"BENCH-RESULT ") :])
            self._log.write(line)  # a library's own print()

    def ready(self, timeout: float = 180) -> None:
        self._answer(timeout)

    def ask(self, command: str, timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return self._answer(timeout)

    def finish(self) -> dict[str, Any]:
        try:
            return self.ask("exit", timeout=60)
        finally:
            self.process.wait(timeout=30)
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
