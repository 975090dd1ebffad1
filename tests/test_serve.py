"""config/serve.py, `make run`'s server, as a real process: with several workers each listens on a socket of
its own in the port's SO_REUSEPORT group, so that connections arriving together are spread over the workers
(with `uvicorn --workers`, which they all share one socket under, bench/run.py's 16 connections went 16/0 and
11/5), a worker that dies is replaced by one that binds its own, and a port in use fails at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import serve

REPO = Path(__file__).resolve().parent.parent
LISTEN, ESTABLISHED = "0A", "01"  # TCP states in /proc/net/tcp

# The balancing itself, and these tests' reading of /proc, are Linux's: elsewhere config/serve.py is plain
# `uvicorn --workers` (macOS accepts SO_REUSEPORT but hands every connection to one socket).
linux_only = pytest.mark.skipif(
    not serve.BALANCED,
    reason="SO_REUSEPORT balancing and /proc exist on Linux only; elsewhere serve.py is plain uvicorn",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def server_sockets(port: int, state: str) -> set[str]:
    """Inodes of the sockets on local port `port` in `state` (the server's side of each connection)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def workers_by_socket(parent: int, port: int, state: str) -> dict[int, int]:
    """{worker pid: how many of the port's sockets in `state` it holds} for the workers of `parent`."""
    wanted = server_sockets(port, state)
    return {pid: len(socket_inodes(pid) & wanted) for pid in children(parent) if socket_inodes(pid) & wanted}


def wait_for(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def start(port: int, tmp_path: Path, workers: int = 2) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        "LOCAL_ENABLED": "false",
        "OPENAI_API_KEY": "",
        "ANTHROPIC_API_KEY": "",
        "GEMINI_API_KEY": "",
    }
    command = [sys.executable, "-m", "config.serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = start(port, tmp_path)
    try:
        # Both workers up: each holds a listening socket on the port.
        wait_for(lambda: len(workers_by_socket(process.pid, port, LISTEN)) == 2)
        yield process, port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(port: int, sock: socket.socket | None = None) -> bytes:
    """One HTTP/1.1 request on `sock` (a new connection if None): the status line."""
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /api/v1/health/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock.recv(65536).split(b"\r\n", 1)[0]


@linux_only
def test_each_worker_listens_on_a_socket_of_its_own(server) -> None:
    process, port = server
    listening = server_sockets(port, LISTEN)
    # Two listening sockets, one per worker (uvicorn --workers: one socket, shared by every process).
    assert len(listening) == 2
    assert sorted(workers_by_socket(process.pid, port, LISTEN).values()) == [1, 1]
    assert not socket_inodes(process.pid) & listening  # the parent holds the address without listening


@linux_only
def test_connections_that_arrive_together_are_spread_over_the_workers(server) -> None:
    process, port = server
    connections = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(64)]
    try:
        for sock in connections:
            assert get(port, sock).startswith(b"HTTP/1.1 ")  # answered: accepted by some worker
        held = workers_by_socket(process.pid, port, ESTABLISHED)
        # Spread by a hash of the client's port: 32 each on average; fewer than 16 on one worker would
        # happen about once in 30,000 runs. With one shared socket one worker took them all, or nearly.
        assert sum(held.values()) == 64, held
        assert len(held) == 2 and min(held.values()) >= 16, held
    finally:
        for sock in connections:
            sock.close()


@linux_only
def test_a_worker_that_dies_is_replaced_by_one_listening_on_its_own_socket(server) -> None:
    process, port = server
    victim = next(iter(workers_by_socket(process.pid, port, LISTEN)))
    os.kill(victim, signal.SIGKILL)

    def replaced() -> dict[int, int] | None:
        workers = workers_by_socket(process.pid, port, LISTEN)
        return workers if len(workers) == 2 and victim not in workers else None

    assert sorted(wait_for(replaced).values()) == [1, 1]
    assert len(server_sockets(port, LISTEN)) == 2
    for _ in range(8):  # every new connection is answered, whichever socket the kernel picks
        assert get(port).startswith(b"HTTP/1.1 ")


@linux_only
def test_sigterm_stops_the_parent_and_every_worker(server) -> None:
    process, port = server
    workers = list(workers_by_socket(process.pid, port, LISTEN))

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_one_worker_is_plain_uvicorn_and_serves(tmp_path: Path) -> None:
    """`make run`'s default (WEB_CONCURRENCY unset): one process, uvicorn's own socket, no supervisor."""
    port = free_port()
    process = start(port, tmp_path, workers=1)
    try:
        status = wait_for(lambda: _answer(port))
        assert status.startswith(b"HTTP/1.1 ")
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn's own server (no supervisor, which would exit 0) shuts down, then re-raises the signal it
        # caught, as `uvicorn` run by hand does.
        assert process.wait(timeout=30) == -signal.SIGTERM


def _answer(port: int) -> bytes | None:
    try:
        return get(port)
    except OSError:
        return None


def test_a_bad_web_concurrency_is_refused_with_its_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "two")
    with pytest.raises(SystemExit) as exited:
        serve.main(["--port", "8000"])
    assert exited.value.code == 2  # argparse: "argument --workers: invalid int value: 'two'"


@linux_only
def test_a_port_in_use_fails_at_once_with_the_address_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(port, tmp_path)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
