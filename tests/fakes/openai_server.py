"""A fake OpenAI Chat Completions server, close enough to the real wire format for the official `openai` SDK.

POST /v1/chat/completions answers a scripted `Reply` as one JSON `chat.completion` or, with `"stream": true`,
as SSE `chat.completion.chunk` events (role chunk, text/refusal/tool-call deltas, a finish chunk, the usage
chunk with empty `choices` when `stream_options.include_usage` is set, then `data: [DONE]`).
GET /v1/models lists `models`. Faults (see tests/fakes/server.Fault) replace or break the answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.fakes.server import Exchange, FakeProviderServer, Fault, RecordedRequest, Reply

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def split_arguments(arguments: str) -> list[str]:
    """Tool-call arguments arrive in pieces in a real stream; cut them in a few uneven parts."""
    if len(arguments) < 4:
        return [arguments]
    third = len(arguments) // 3
    return [arguments[:third], arguments[third : 2 * third + 1], arguments[2 * third + 1 :]]


def request_problem(body: dict[str, Any]) -> str | None:
    """Why the real Chat Completions API would refuse `body` (the parts our adapter sends), or None: a
    response_format json_schema is a valid JSON Schema with a name, tools are functions with valid parameter
    schemas, tool_choice names an offered tool, every tool message answers an earlier call, image parts are
    data: URLs, stop has at most 4 sequences."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        if not spec.get("name") or not isinstance(spec.get("schema"), dict):
            return "response_format.json_schema needs a name and a schema"
        try:
            jsonschema.validators.validator_for(spec["schema"]).check_schema(spec["schema"])
        except jsonschema.SchemaError as exc:
            return f"invalid schema: {exc.message}"
    names = []
    for tool in body.get("tools") or ():
        function = tool.get("function") or {}
        if tool.get("type") != "function" or not function.get("name"):
            return "tools[].type must be function, with a name"
        jsonschema.validators.validator_for(function.get("parameters", {})).check_schema(
            function.get("parameters", {})
        )
        names.append(function["name"])
    choice = body.get("tool_choice")
    if choice is not None and not names:
        return "tool_choice is only allowed when tools are specified"
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name") not in names:
        return "tool_choice names no tool"
    if isinstance(body.get("stop"), list) and len(body["stop"]) > 4:
        return "stop: at most 4 sequences"
    called: set[str] = set()
    for message in body.get("messages") or ():
        for call in message.get("tool_calls") or ():
            called.add(call.get("id"))
            json.loads(call["function"]["arguments"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return "messages with role 'tool' must be a response to a preceding message with 'tool_calls'"
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "image_url" and not part["image_url"]["url"].startswith("data:"):
                    return "only data: image URLs in these tests"
    return None


class FakeOpenAIServer(FakeProviderServer):
    provider = "openai"

    def __init__(self) -> None:
        super().__init__()
        self.models = ["gpt-4o-mini", "gpt-4o"]
        # Some OpenAI-compatible servers ignore `stream_options.include_usage`; set this to behave like them.
        self.omit_stream_usage = False
        self._counter = 0

    def reset(self) -> None:
        super().reset()
        self.omit_stream_usage = False

    # ------------------------------------------------------------------ routing
    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        streaming = bool(body.get("stream"))
        if fault is not None and await self.apply_fault(request, exchange, fault, streaming):
            return
        if request.method == "GET" and request.path == "/v1/models":
            await exchange.json(200, self.models_body())
            return
        if request.method != "POST" or request.path != "/v1/chat/completions":
            await exchange.json(404, self.error_body(404, f"Unknown path {request.path}", None))
            return
        problem = request_problem(body)
        if problem is not None:
            # What the real API refuses, this fake refuses too: a test cannot pass on a malformed request.
            await exchange.json(400, self.error_body(400, problem, "invalid_request"))
            return
        reply = self.next_reply()
        if streaming:
            await self.stream_reply(exchange, reply, body, fault)
        else:
            await exchange.json(200, self.completion_body(reply, body))

    async def apply_fault(
        self, request: RecordedRequest, exchange: Exchange, fault: Fault, streaming: bool
    ) -> bool:
        """Answer the fault; True if the request is fully handled (False: carry on with the normal answer)."""
        if fault.kind == "status":
            headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            message = fault.message
            if fault.status == 401:
                # The real API echoes (a masked form of) the key it was given; echo it whole, the worst case,
                # so that tests prove the adapter scrubs it.
                key = request.headers.get("authorization", "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {key}. {fault.message}"
            await exchange.json(fault.status, self.error_body(fault.status, message, fault.code), headers)
            return True
        if fault.kind == "slow_first_byte":
            await exchange.sleep(fault.delay)
            return False
        if fault.kind == "hang":
            await exchange.hang()
        if fault.kind == "drop_connection":
            await exchange.abort()
        if fault.kind == "malformed_json":
            if streaming:
                await exchange.start(200, content_type="text/event-stream")
                event = fault.body or b'{"id": "chatcmpl-broken", "choices": [{"delta": '
                await exchange.write(b"data: " + event + b"\n\n")
                await exchange.close()
            else:
                await exchange.raw(200, fault.body or b'{"id": "chatcmpl-broken", "choices": [')
            return True
        if fault.kind == "cut_stream" and not streaming:
            # A JSON answer cut midway: half a body, then the socket closes.
            await exchange.start(200)
            await exchange.write(b'{"id": "chatcmpl-cut", "object": "chat.completion", ')
            await exchange.abort()
        return False  # cut_stream on a stream is handled while streaming

    # ------------------------------------------------------------------ bodies
    def next_id(self) -> str:
        self._counter += 1
        return f"chatcmpl-fake{self._counter:06d}"

    def models_body(self) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]
        return {"object": "list", "data": data}

    @staticmethod
    def error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
        kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    @staticmethod
    def finish_reason(reply: Reply) -> str:
        if reply.finish_reason:
            return reply.finish_reason
        return "tool_calls" if reply.tool_calls else "stop"

    @staticmethod
    def usage_body(reply: Reply) -> dict[str, int]:
        return {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }

    def completion_body(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if reply.refusal else reply.text,
            "refusal": reply.refusal,
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
                }
                for call in reply.tool_calls
            ]
        return {
            "id": self.next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "gpt-4o-mini"),
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": self.logprobs_body(reply, body),
                    "finish_reason": self.finish_reason(reply),
                }
            ],
            "usage": self.usage_body(reply),
        }

    @staticmethod
    def logprobs_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any] | None:
        """Asked for (`logprobs: true`): one record per word, each with `top_logprobs` alternatives."""
        if not body.get("logprobs"):
            return None
        alternatives = int(body.get("top_logprobs") or 0)
        content = [
            {
                "token": piece,
                "logprob": -0.5,
                "bytes": list(piece.encode()),
                "top_logprobs": [
                    {"token": piece, "logprob": -0.5 - rank, "bytes": list(piece.encode())}
                    for rank in range(alternatives)
                ],
            }
            for piece in reply.pieces()
        ]
        return {"content": content, "refusal": None}

    def deltas(self, reply: Reply) -> Iterator[dict[str, Any]]:
        """The `delta` objects of a stream, in the order the real API sends them."""
        yield {"role": "assistant", "content": "", "refusal": None}
        if reply.refusal:
            for word in Reply(text=reply.refusal).pieces():
                yield {"refusal": word}
        for piece in reply.pieces():
            yield {"content": piece}
        for index, call in enumerate(reply.tool_calls):
            head = {"index": index, "id": call["id"], "type": "function"}
            yield {"tool_calls": [{**head, "function": {"name": call["name"], "arguments": ""}}]}
            for part in split_arguments(json.dumps(call["arguments"])):
                yield {"tool_calls": [{"index": index, "function": {"arguments": part}}]}

    async def stream_reply(
        self, exchange: Exchange, reply: Reply, body: dict[str, Any], fault: Fault | None
    ) -> None:
        asked_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage = asked_usage and not self.omit_stream_usage
        base = {
            "id": self.next_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "gpt-4o-mini"),
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None
        await exchange.start(200, content_type="text/event-stream")
        content_chunks = 0
        for delta in self.deltas(reply):
            if fault is not None and fault.kind == "cut_stream" and content_chunks >= fault.after_chunks:
                # The stream stops early: no finish chunk, no usage, no [DONE].
                await (exchange.abort() if fault.abrupt else exchange.close())
                return
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            await exchange.sse({**base, "choices": [choice]})
            if "role" not in delta:
                content_chunks += 1
                if reply.chunk_delay:
                    await exchange.sleep(reply.chunk_delay)
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": self.finish_reason(reply)}
        await exchange.sse({**base, "choices": [finish]})
        if include_usage:
            await exchange.sse({**base, "choices": [], "usage": self.usage_body(reply)})
        await exchange.sse("[DONE]")
        await exchange.close()


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The session's fake OpenAI server, with no queued replies, faults or recorded requests."""
    fake_openai_server.reset()
    return fake_openai_server
