"""A fake Anthropic Messages API server, close enough to the real wire format for the official SDK.

POST /v1/messages answers a scripted `Reply` as one JSON `message` or, with `"stream": true`, as the real SSE
event sequence: message_start (input usage), then per content block content_block_start / content_block_delta
(text_delta or input_json_delta) / content_block_stop, a ping, message_delta (stop_reason, output usage) and
message_stop. Errors use `{"type": "error", "error": {"type", "message"}}`; 529 is `overloaded_error`.
A request that forces a tool (`tool_choice` {"type": "tool"}) while the reply scripts no tool call is
answered as the model would: that tool called with the reply text (parsed as JSON) as its input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.server import Exchange, FakeProviderServer, Fault, RecordedRequest, Reply

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class AnthropicReply(Reply):
    """A Reply with Anthropic-only outcomes. `stream_error` ends a stream, after its text, with an SSE
    `event: error` of that type (e.g. "overloaded_error"), as the real API does when it fails midway."""

    stream_error: str | None = None


def split_json(text: str) -> list[str]:
    """input_json_delta pieces: the real API sends partial JSON in uneven slices."""
    size = max(1, len(text) // 3)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def messages_problem(body: dict[str, Any]) -> str | None:
    """Why the real Messages API would refuse `body` (the parts our adapter sends), or None: turns alternate
    every tool_result answers a tool_use of the turn before, tool_choice names an
    offered tool, images are base64 blocks of an image type."""
    names = {tool.get("name") for tool in body.get("tools") or ()}
    choice = body.get("tool_choice") or {}
    if choice and not names:
        return "tool_choice requires tools"
    if choice.get("type") == "tool" and choice.get("name") not in names:
        return f"tool_choice names no tool: {choice.get('name')}"
    blocks_used = {
        block.get("type")
        for turn in body.get("messages") or ()
        if isinstance(turn.get("content"), list)
        for block in turn["content"]
    }
    if blocks_used & {"tool_use", "tool_result"} and not names:
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    previous_uses: set[str] = set()
    previous_role = None
    for index, turn in enumerate(body.get("messages") or ()):
        if turn.get("role") == previous_role:
            return f"messages.{index}: roles must alternate"
        previous_role = turn.get("role")
        blocks = turn["content"] if isinstance(turn["content"], list) else []
        for block in blocks:
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in previous_uses:
                return f"messages.{index}: tool_result {block.get('tool_use_id')} answers no tool_use"
            if block.get("type") == "image":
                source = block.get("source") or {}
                if source.get("type") != "base64" or not str(source.get("media_type", "")).startswith(
                    "image/"
                ):
                    return f"messages.{index}: image source must be base64 image data"
        previous_uses = {block["id"] for block in blocks if block.get("type") == "tool_use"}
    return None


class FakeAnthropicServer(FakeProviderServer):
    provider = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self._counter = 0

    # ------------------------------------------------------------------ routing
    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        streaming = bool(body.get("stream"))
        if fault is not None and await self.apply_fault(request, exchange, fault, streaming):
            return
        if request.method != "POST" or request.path != "/v1/messages":
            await exchange.json(
                404, self.error_body(404, f"{request.method} {request.path} is not served here")
            )
            return
        problem = messages_problem(body)
        if problem is not None:
            # What the real API refuses, this fake refuses too: a test cannot pass on a malformed request.
            await exchange.json(400, self.error_body(400, problem))
            return
        reply = self.next_reply()
        blocks = self.content_blocks(reply, body)
        if streaming:
            await self.stream_reply(exchange, reply, body, blocks, fault)
        else:
            await exchange.json(200, self.message_body(reply, body, blocks))

    async def apply_fault(
        self, request: RecordedRequest, exchange: Exchange, fault: Fault, streaming: bool
    ) -> bool:
        """Answer the fault; True if the request is fully handled (False: carry on with the normal answer)."""
        if fault.kind == "status":
            headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            message = fault.message
            if fault.status == 401:
                # Echo the key whole (the worst case) so that tests prove the adapter scrubs it. SDK 2.x sends
                # it as a bearer token; older ones as x-api-key.
                bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
                key = request.headers.get("x-api-key") or bearer
                message = f"invalid API key: {key}. {fault.message}"
            await exchange.json(fault.status, self.error_body(fault.status, message), headers)
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
                await exchange.write(
                    b'event: message_start\ndata: {"type": "message_start", "message": {\n\n'
                )
                await exchange.close()
            else:
                await exchange.raw(200, b'{"id": "msg_broken", "type": "message", "content": [')
            return True
        if fault.kind == "cut_stream" and not streaming:
            await exchange.start(200)
            await exchange.write(b'{"id": "msg_cut", "type": "message", ')
            await exchange.abort()
        return False  # cut_stream on a stream is handled while streaming

    # ------------------------------------------------------------------ bodies
    def next_id(self, prefix: str = "msg") -> str:
        self._counter += 1
        return f"{prefix}_fake{self._counter:06d}"

    @staticmethod
    def error_body(status: int, message: str) -> dict[str, Any]:
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}

    @staticmethod
    def stop_reason(reply: Reply, blocks: list[dict[str, Any]]) -> str:
        if reply.refusal:
            return "refusal"
        if reply.finish_reason:
            return reply.finish_reason
        return "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"

    def content_blocks(self, reply: Reply, body: dict[str, Any]) -> list[dict[str, Any]]:
        forced = body.get("tool_choice") or {}
        if forced.get("type") == "tool" and not reply.tool_calls:
            # The model obeys a forced tool: the scripted text is that tool's input.
            call = {"id": self.next_id("toolu"), "name": forced["name"], "input": json.loads(reply.text)}
            return [{"type": "tool_use", **call}]
        blocks: list[dict[str, Any]] = []
        text = reply.refusal or reply.text
        if text:
            blocks.append({"type": "text", "text": text})
        blocks += [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]}
            for c in reply.tool_calls
        ]
        return blocks

    def message_body(
        self, reply: Reply, body: dict[str, Any], blocks: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": self.next_id(),
            "type": "message",
            "role": "assistant",
            "model": reply.model or body.get("model", "claude-fake"),
            "content": blocks,
            "stop_reason": self.stop_reason(reply, blocks),
            "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        }

    @staticmethod
    def block_events(index: int, block: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
        """content_block_start, its deltas, content_block_stop."""
        if block["type"] == "text":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            for piece in Reply(text=block["text"]).pieces():
                delta = {"type": "text_delta", "text": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield {"type": "content_block_start", "index": index, "content_block": start}
            for piece in split_json(json.dumps(block["input"])):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}

    async def stream_reply(
        self,
        exchange: Exchange,
        reply: Reply,
        body: dict[str, Any],
        blocks: list[dict[str, Any]],
        fault: Fault | None,
    ) -> None:
        message = self.message_body(reply, body, blocks)
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
        }
        await exchange.start(200, content_type="text/event-stream")
        await exchange.sse({"type": "message_start", "message": start}, event="message_start")
        await exchange.sse({"type": "ping"}, event="ping")
        deltas = 0
        for index, block in enumerate(blocks):
            for event in self.block_events(index, block, reply):
                if event["type"] == "content_block_delta":
                    if fault is not None and fault.kind == "cut_stream" and deltas >= fault.after_chunks:
                        # The stream stops early: no message_delta, no message_stop.
                        await (exchange.abort() if fault.abrupt else exchange.close())
                        return
                    deltas += 1
                await exchange.sse(event, event=event["type"])
                if event["type"] == "content_block_delta" and reply.chunk_delay:
                    await exchange.sleep(reply.chunk_delay)
        stream_error = getattr(reply, "stream_error", None)
        if stream_error:
            error = {"type": "error", "error": {"type": stream_error, "message": "fake failure midway"}}
            await exchange.sse(error, event="error")
            await exchange.close()
            return
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        }
        await exchange.sse(delta, event="message_delta")
        await exchange.sse({"type": "message_stop"}, event="message_stop")
        await exchange.close()


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropicServer) -> FakeAnthropicServer:
    """The session's fake Anthropic server, with no queued replies, faults or recorded requests."""
    fake_anthropic_server.reset()
    return fake_anthropic_server
