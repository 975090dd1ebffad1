"""GeminiPlatform faults, through the real google-genai SDK against the fake Gemini server: each fault maps to
the right PlatformError after exactly one request; closing or cancelling a stream closes its HTTP response;
the API key never shows in an error or a log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator

import pytest

from apps.platforms.errors import PlatformError
from apps.platforms.gemini import GeminiPlatform
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.server import Fault, Reply
from tests.platforms.gemini_support import KEY, ask, failure, make_platform, stream_error


@pytest.fixture
async def gemini(fake_gemini: FakeGeminiServer) -> AsyncIterator[GeminiPlatform]:
    platform = make_platform(fake_gemini.url)
    yield platform
    await platform.aclose()


# ---------------------------------------------------------------------- HTTP faults
STATUS_CASES = [
    # (status, kind, retryable)
    (429, "rate_limited", True),
    (500, "server_error", True),
    (503, "server_error", True),
    (400, "bad_request", False),
    (401, "auth", False),
    (403, "auth", False),
    (404, "not_found", False),
]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("status", "kind", "retryable"), STATUS_CASES)
async def test_error_status_maps_to_platform_error_after_one_request(
    gemini, fake_gemini, status, kind, retryable, streaming
):
    fake_gemini.fail(Fault("status", status=status, message="nope"))

    error = await failure(gemini, ask(), streaming=streaming)

    assert (error.provider, error.status, error.kind, error.retryable) == ("gemini", status, kind, retryable)
    assert "nope" in error.message
    # SDK retries are off: the engine alone decides, so one call is one request even for 429/5xx.
    assert len(fake_gemini.requests) == 1
    assert error.may_fall_back is (status != 400)


async def test_429_retry_after_header(gemini, fake_gemini):
    fake_gemini.fail(Fault("status", status=429, retry_after=7))

    error = await failure(gemini, ask(), streaming=False)

    assert (error.kind, error.retry_after) == ("rate_limited", 7.0)
    assert "RESOURCE_EXHAUSTED" in error.message


async def test_429_retry_info_detail_when_no_header(gemini, fake_gemini):
    fake_gemini.retry_info_only = True
    fake_gemini.fail(Fault("status", status=429, retry_after=12.5))

    _, error = await stream_error(gemini, ask())

    assert (error.kind, error.retry_after) == ("rate_limited", 12.5)


@pytest.mark.parametrize("streaming", [False, True])
async def test_hang_times_out(fake_gemini, streaming):
    platform = make_platform(fake_gemini.url, timeout=0.5)
    fake_gemini.fail(Fault("hang"))

    error = await failure(platform, ask(), streaming=streaming)
    await platform.aclose()

    assert (error.kind, error.retryable) == ("timeout", True)
    assert len(fake_gemini.requests) == 1


async def test_request_timeout_overrides_the_platform_default(gemini, fake_gemini):
    fake_gemini.fail(Fault("hang"))

    error = await failure(gemini, ask(timeout=0.3), streaming=False)  # the platform default is 10 s

    assert error.kind == "timeout"


async def test_slow_first_byte_within_the_timeout_succeeds(gemini, fake_gemini):
    fake_gemini.fail(Fault("slow_first_byte", delay=0.3))
    fake_gemini.reply(text="late but fine")

    assert (await gemini.generate(ask())).text == "late but fine"


@pytest.mark.parametrize("abrupt", [False, True])
async def test_cut_stream_raises_incomplete_stream_after_the_first_chunks(gemini, fake_gemini, abrupt):
    fake_gemini.fail(Fault("cut_stream", after_chunks=2, abrupt=abrupt))
    fake_gemini.reply(text="a b c d e")

    chunks, error = await stream_error(gemini, ask())

    assert [c.text for c in chunks] == ["a ", "b "]
    assert (error.kind, error.retryable) == ("incomplete_stream", True)


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_json_is_a_malformed_response(gemini, fake_gemini, streaming):
    fake_gemini.fail(Fault("malformed_json"))

    error = await failure(gemini, ask(), streaming=streaming)

    assert (error.kind, error.retryable) == ("malformed_response", True)


@pytest.mark.parametrize("streaming", [False, True])
async def test_dropped_connection_is_a_retryable_connection_error(gemini, fake_gemini, streaming):
    fake_gemini.fail(Fault("drop_connection"))

    error = await failure(gemini, ask(), streaming=streaming)

    assert (error.kind, error.retryable) == ("connection", True)
    assert len(fake_gemini.requests) == 1


# ---------------------------------------------------------------------- cancellation
def slow_reply() -> Reply:
    return Reply(text=" ".join(f"w{i}" for i in range(50)), chunk_delay=0.2)


async def test_closing_the_stream_closes_the_http_response(gemini, fake_gemini):
    fake_gemini.reply(slow_reply())
    stream = gemini.stream(ask())

    first = await anext(stream)
    await stream.aclose()

    assert first.text == "w0 "
    assert await asyncio.to_thread(fake_gemini.wait_for_disconnect)


@pytest.mark.parametrize("busy_between_chunks", [False, True])
async def test_cancelling_the_consumer_closes_the_http_response(gemini, fake_gemini, busy_between_chunks):
    """Cancelled while waiting for the next chunk, or while busy with the last one (the generator then closes
    through `aclosing`, as the engine consumes streams)."""
    fake_gemini.reply(slow_reply())
    received = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(gemini.stream(ask())) as stream:
            async for _ in stream:
                received.set()
                if busy_between_chunks:
                    await asyncio.sleep(30)

    task = asyncio.create_task(consume())
    await received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(fake_gemini.wait_for_disconnect)


# ---------------------------------------------------------------------- the key never leaks
async def test_api_key_never_appears_in_errors_or_logs(gemini, fake_gemini, caplog):
    caplog.set_level(logging.DEBUG)
    # A server that echoes the key, in the body and as a `key=` URL: both must be scrubbed.
    echo = f"API key not valid: {KEY}; see https://example.test/v1beta/models?key=AIzaOTHERSECRET"
    faults = [
        Fault("status", status=400, message=echo),
        Fault("status", status=401, message=echo),
        Fault("status", status=429, message=echo, retry_after=1),
        Fault("status", status=500, message=echo),
        Fault("malformed_json"),
        Fault("drop_connection"),
    ]
    errors: list[PlatformError] = []
    for fault in faults:
        for streaming in (False, True):
            fake_gemini.fail(fault)
            errors.append(await failure(gemini, ask(), streaming=streaming))
    fake_gemini.fail(Fault("cut_stream", after_chunks=1))
    errors.append((await stream_error(gemini, ask()))[1])

    assert len(errors) == 2 * len(faults) + 1
    for error in errors:
        for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
            assert KEY not in text
        assert "AIzaOTHERSECRET" not in str(error)
    assert caplog.records, "expected the SDK and httpx to log something at DEBUG"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in caplog.text
