"""The API server (`make run`): uvicorn serving config.asgi:application in WEB_CONCURRENCY processes, each
listening on a socket of its own.

    .venv/bin/python -m config.serve --host 127.0.0.1 --port 8000 [--workers N]

Why not `uvicorn --workers N`: uvicorn binds one socket in its parent and every worker accepts from it. When
connections arrive together (a load balancer or a client opening its keep-alive pool), the workers' event
loops all wake and the first one accepts every pending connection (asyncio accepts up to the backlog per
wake-up), so one process serves most of them for their whole life while the other cores idle. Measured with
bench/run.py's client (16 keep-alive connections, two workers): splits of 16/0 and 11/5 with plain uvicorn,
one worker at a full core and the other at none.

Here each worker binds its own listening socket to the same address with SO_REUSEPORT, and the kernel spreads
new connections over the workers' sockets by a hash of their addresses. uvicorn has no option for this (its
pull request encode/uvicorn#2472 is open), so its supervisor is used as it is (health checks, restarting a
dead worker, signals) with one change: its worker processes are given no socket and bind their own. The parent
binds the address first, without listening, so that a port in use fails at once and the port stays ours while
a worker restarts. Linux lets only processes of the same user join a port's group. One worker, or a system
other than Linux (macOS accepts SO_REUSEPORT but gives every connection to one socket), is plain uvicorn.

Proxy headers follow TRUSTED_PROXIES as the application does (config/launch.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from config import launch

logger = logging.getLogger("uvicorn.error")

APP = "config.asgi:application"
#: Linux balances connections over a SO_REUSEPORT group; other systems (macOS) give them all to one socket.
BALANCED = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) in the address's SO_REUSEPORT group (the server listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class OwnSocketServer(uvicorn.Server):
    """A worker's server: listens on a socket of its own in the port's SO_REUSEPORT group."""

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            sock = reuse_port_socket(self.config.host, self.config.port)
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", self.config.host, self.config.port, exc.strerror)
            sys.exit(STARTUP_FAILURE)  # the supervisor stops rather than restarting a worker that cannot bind
        super().run(sockets=[sock])


class OwnSocketWorker(multiprocess.Process):
    """uvicorn's worker process, serving with OwnSocketServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = OwnSocketServer(config=self.config)
        return self._server


def config_for(args: argparse.Namespace) -> uvicorn.Config:
    proxies = launch.trusted_proxies()
    return uvicorn.Config(
        APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level=args.log_level,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=",".join(proxies) or None,
    )


def serve(config: uvicorn.Config) -> None:
    if config.workers <= 1:
        uvicorn.Server(config).run()
        return
    if not BALANCED:  # as `uvicorn --workers`
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    # Held, not listening: the address is ours (a port in use fails here, with a clear error) and stays ours
    # while a worker restarts; connections go only to the workers' listening sockets.
    try:
        holder = reuse_port_socket(config.host, config.port)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    multiprocess.Process = OwnSocketWorker  # type: ignore[misc]  # what the supervisor starts and restarts
    try:
        logger.info(
            "Uvicorn running on http://%s:%d with %d processes (Press CTRL+C to quit)",
            config.host,
            config.port,
            config.workers,
        )
        multiprocess.Multiprocess(config, sockets=[]).run()
    finally:
        holder.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("WEB_CONCURRENCY") or "1",  # a string default goes through `type` too
        help="server processes (default: WEB_CONCURRENCY, else 1)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        config = config_for(args)
    except ValueError as exc:
        print(f"TRUSTED_PROXIES: {exc}", file=sys.stderr)
        return 2
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
