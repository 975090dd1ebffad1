"""`make bench`'s load generator (bench/compare/load.py) against real sockets: it must count an answer as good
only when the whole answer arrived with status 200 and the expected text, whatever its framing or however
the bytes are split, and must survive a server that closes the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from bench.compare.load import Connection, HTTPFailure, Pool, Target, _parse

EXPECT = b"Hello from the fake provider."
BODY = json.dumps({"choices": [{"message": {"content": EXPECT.decode()}}]}).encode()


def _sized(status: str = "200 OK", body: bytes = BODY) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def _chunked(body: bytes = BODY) -> bytes:
    half = len(body) // 2
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:]))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@contextlib.asynccontextmanager
async def _server(answers: list[bytes], *, split: int = 0, close_after: int = 0):
    """A server on 127.0.0.1 that answers each request on a connection with the next of `answers` (the last
    repeats), written `split` bytes at a time when `split`, and closes a connection after `close_after`
    answers when `close_after`. Yields its URL and the number of connections it accepted."""
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                    ).split(b":")[1]
                )
                await reader.readexactly(length)
                answer = answers[min(served, len(answers) - 1)]
                served += 1
                step = split or len(answer)
                for at in range(0, len(answer), step):
                    writer.write(answer[at : at + step])
                    await writer.drain()
                    if split:
                        await asyncio.sleep(0.001)
                if close_after and served >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions", accepted
    finally:
        server.close()
        await server.wait_closed()


def _target(url: str) -> Target:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return Target("t", url, {"Authorization": "Bearer k"}, body, body)


@pytest.mark.parametrize("answer", [_sized(), _chunked()], ids=["content-length", "chunked"])
@pytest.mark.parametrize("split", [0, 7], ids=["whole", "in-pieces"])
async def test_every_answer_is_read_whole_whatever_its_framing(answer, split):
    async with _server([answer], split=split) as (url, accepted):
        pool = Pool(_target(url), 3)
        await pool.open(warmup=1)
        result = await pool.run(max_requests=30, duration=10)
        await pool.aclose()
    assert (result.ok, result.errors) == (30, 0)
    assert accepted[0] == 3


async def test_a_wrong_status_or_body_is_an_error_with_its_text():
    async with _server([_sized(), _sized("503 Service Unavailable", b"overloaded"), _sized(body=b"{}")]) as (
        url,
        _,
    ):
        pool = Pool(_target(url), 1)
        await pool.open(warmup=0)  # takes the first (good) answer
        result = await pool.run(max_requests=2, duration=10)
        await pool.aclose()
    assert (result.ok, result.errors) == (0, 2)
    assert result.first_error == "503: overloaded"


async def test_a_connection_the_server_closes_is_opened_again():
    async with _server([_sized()], close_after=2) as (url, accepted):
        pool = Pool(_target(url), 1)
        await pool.open(warmup=0)
        result = await pool.run(max_requests=6, duration=10)
        await pool.aclose()
    # The server closes each connection after its second answer. The next request either finds it closed
    # and opens another, or is sent before the close arrives and fails; either way a new connection serves
    # the requests after it.
    assert result.ok + result.errors == 6
    assert result.ok >= 4
    assert accepted[0] >= 2


def test_the_parser_waits_for_a_whole_answer_and_refuses_what_is_not_http():
    whole = _chunked()
    for cut in range(len(whole)):  # every prefix is incomplete, never a wrong answer
        assert _parse(bytearray(whole[:cut])) is None
    status, body, used = _parse(bytearray(whole + b"HTTP/1.1 next"))
    assert (status, body, used) == (200, BODY, len(whole))
    with pytest.raises(HTTPFailure, match=r"not an HTTP/1\.1 answer"):
        _parse(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))
    with pytest.raises(HTTPFailure, match="neither Content-Length nor chunked"):
        _parse(bytearray(b"HTTP/1.1 200 OK\r\n\r\nbody"))


async def test_a_closed_connection_fails_its_waiting_request():
    connection = Connection()
    loop = asyncio.get_running_loop()
    async with _server([b""], close_after=1) as (url, _):
        port = int(url.split(":")[2].split("/")[0])
        transport, _ = await loop.create_connection(lambda: connection, "127.0.0.1", port)
        body = b"{}"
        request = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n" + body
        with pytest.raises(HTTPFailure, match="connection closed"):
            await asyncio.wait_for(connection.send(request), 5)
        transport.close()
