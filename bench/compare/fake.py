"""The fake OpenAI-compatible server every contender calls, in its own process (project venv).

    .venv/bin/python -m bench.compare.fake          # prints {"port": N} once listening

The same FakeOpenAIServer the tests use (tests/fakes/openai_server.py), on uvloop + httptools, with three
variants on one port: `/v1/...` answers at once, `/slow50/v1/...` waits 50 ms before the first byte (JSON and
SSE alike), `/stream/60x500/v1/...` streams 60 words, one every 500 ms (bench/load_streams.py). Requests are
not kept (a bounded deque), so memory stays flat over a long run.
"""

from __future__ import annotations

import contextvars
import json
import re
import socket
import sys
from collections import deque

import uvicorn

from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.server import Exchange, Fault, RecordedRequest, Reply

SLOW_PREFIX = "/slow50"
SLOW_SECONDS = 0.050


# `/stream/<deltas>x<milliseconds>/v1/...`: a streamed answer of <deltas> words, one every <milliseconds>
# (bench/load_streams.py: 60 x 500 ms, a 30 s stream). Per request, so concurrent streams do not share it.
STREAM_PREFIX = re.compile(r"^/stream/(\d{1,4})x(\d{1,6})(/.*)$")
_stream_reply: contextvars.ContextVar[Reply | None] = contextvars.ContextVar("stream_reply", default=None)


class BenchOpenAIServer(FakeOpenAIServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests = deque(maxlen=1)  # type: ignore[assignment]

    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        if request.path.startswith(SLOW_PREFIX + "/"):
            request.path = request.path[len(SLOW_PREFIX) :]
            await exchange.sleep(SLOW_SECONDS)
        elif match := STREAM_PREFIX.match(request.path):
            deltas, milliseconds, request.path = int(match[1]), int(match[2]), match[3]
            text = " ".join(f"w{i}" for i in range(deltas))
            _stream_reply.set(Reply(text=text, chunk_delay=milliseconds / 1000, output_tokens=deltas))
        await super().handle(request, exchange, fault)

    def next_reply(self) -> Reply:
        return _stream_reply.get() or super().next_reply()


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
