"""The fake OpenAI-compatible server every contender calls, in its own process (project venv).

    .venv/bin/python -m bench.compare.fake          # prints {"port": N} once listening

The same FakeOpenAIServer the tests use (tests/fakes/openai_server.py), on uvloop + httptools, with two
variants on one port: `/v1/...` answers at once, `/slow50/v1/...` waits 50 ms before the first byte (JSON and
SSE alike). Requests are not kept (a bounded deque), so memory stays flat over a long run.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import deque

import uvicorn

from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.server import Exchange, Fault, RecordedRequest

SLOW_PREFIX = "/slow50"
SLOW_SECONDS = 0.050


class BenchOpenAIServer(FakeOpenAIServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests = deque(maxlen=1)  # type: ignore[assignment]

    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        if request.path.startswith(SLOW_PREFIX + "/"):
            request.path = request.path[len(SLOW_PREFIX) :]
            await exchange.sleep(SLOW_SECONDS)
        await super().handle(request, exchange, fault)


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            BenchOpenAIServer(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            loop="uvloop",
            http="httptools",
            backlog=2048,
        )
    )
    # Announce the port only once the server accepts connections.
    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        sys.stdout.write(json.dumps({"port": port}) + "\n")
        sys.stdout.flush()

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
