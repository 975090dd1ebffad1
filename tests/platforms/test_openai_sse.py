"""The OpenAI adapter reads a stream's events itself (apps/platforms/sse.py) instead of through the SDK's
pydantic chunks: what the SDK's stream did with odd events must still happen."""

from __future__ import annotations

import httpx2
import openai
import pytest

from apps.platforms.errors import PlatformError
from apps.platforms.openai import OpenAIPlatform
from apps.platforms.openai_wire import StreamState
from apps.platforms.sse import JsonEventStream

REQUEST = httpx2.Request("POST", "http://provider.test/v1/chat/completions")


def sse(body: str) -> JsonEventStream:
    return JsonEventStream(httpx2.Response(200, content=body.encode(), request=REQUEST), sdk=openai)


async def payloads(stream: JsonEventStream) -> list[object]:
    try:
        return [event async for event in stream]
    finally:
        await stream.close()


async def test_data_lines_are_joined_and_other_fields_and_comments_ignored():
    body = ': keep-alive\n\nevent: chunk\nid: 7\ndata: {"a":\ndata: 1}\n\ndata:{"b": 2}\r\n\r\n'
    assert await payloads(sse(body)) == [{"a": 1}, {"b": 2}]


async def test_nothing_after_done_is_read_as_an_event():
    body = 'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"late": true}\n\n'
    assert await payloads(sse(body)) == [{"a": 1}]


async def test_an_error_object_inside_a_200_stream_is_the_sdks_api_error():
    body = 'data: {"a": 1}\n\ndata: {"error": {"message": "slow down", "type": "rate_limit_error"}}\n\n'
    with pytest.raises(openai.APIError) as caught:
        await payloads(sse(body))
    assert caught.value.message == "slow down" and caught.value.type == "rate_limit_error"
    mapped = OpenAIPlatform(api_key="k", default_model="m")._error(caught.value)
    assert (mapped.kind, mapped.retryable) == ("rate_limited", True)


async def test_an_error_without_a_message_gets_the_sdks_wording():
    with pytest.raises(openai.APIError, match="An error occurred during streaming"):
        await payloads(sse('data: {"error": {"code": 1}}\n\n'))


async def test_a_payload_that_is_not_json_is_malformed():
    with pytest.raises(ValueError) as caught:
        await payloads(sse("data: {not json\n\n"))
    mapped = OpenAIPlatform(api_key="k", default_model="m")._error(caught.value)
    assert mapped.kind == "malformed_response"


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(["not", "a", "chunk"], id="not-an-object"),
        pytest.param({"choices": ["text"]}, id="choice-not-an-object"),
        pytest.param({"choices": [{"delta": {"content": 5}}]}, id="content-not-a-string"),
        pytest.param(
            {"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]}, id="function-not-an-object"
        ),
        pytest.param({"usage": 12}, id="usage-not-an-object"),
    ],
)
def test_a_chunk_of_the_wrong_shape_is_malformed(event):
    with pytest.raises(PlatformError) as caught:
        StreamState(model="m").add(event)
    assert caught.value.kind == "malformed_response"
