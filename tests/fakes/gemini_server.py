"""A fake Gemini API server, close enough to the real wire format for the official `google-genai` SDK.

POST /{v1,v1beta}/models/{model}:generateContent answers a scripted `Reply` as one JSON
`GenerateContentResponse`; POST .../models/{model}:streamGenerateContent?alt=sse answers it as SSE
`data: {GenerateContentResponse}` events, one per text piece, the last one carrying the function calls,
`finishReason` and the final `usageMetadata` (every chunk carries the running usage, as the real API does).
Errors use Google's body `{"error": {"code", "message", "status", "details"}}`; a 429 with `retry_after`
carries both a `Retry-After` header and a `google.rpc.RetryInfo` detail, as real quota errors do.
Faults (see tests/fakes/server.Fault) replace or break the answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.server import Exchange, FakeProviderServer, Fault, RecordedRequest, Reply

# google.rpc.Code names, which Gemini puts in `error.status`.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
BLOCKED_RATINGS = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


@dataclass
class GeminiReply(Reply):
    """A Reply with Gemini-only outcomes. `block_reason` blocks the prompt itself: the answer has no
    candidates, only `promptFeedback.blockReason` (e.g. "SAFETY", "PROHIBITED_CONTENT")."""

    block_reason: str | None = None
    # With finish_reason "CONTINUATION": a long-decode checkpoint the SDK would resume from by itself.
    continuation_token: str | None = None


def contents_problem(body: dict[str, Any]) -> str | None:
    """Why the real generateContent would refuse `body` (the parts our adapter sends), or None: every
    functionResponse answers a functionCall of the model turn before, by name; inline data is base64; a
    function calling mode restricted to names names declared functions."""
    declared = {
        declaration.get("name")
        for tool in body.get("tools") or ()
        for declaration in tool.get("functionDeclarations") or ()
    }
    config = ((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}
    for name in config.get("allowedFunctionNames") or ():
        if name not in declared:
            return f"allowedFunctionNames: {name} is not declared"
    called: set[str] = set()
    for index, content in enumerate(body.get("contents") or ()):
        parts = content.get("parts") or ()
        for part in parts:
            response = part.get("functionResponse")
            if response is not None and response.get("name") not in called:
                return f"contents[{index}]: functionResponse {response.get('name')} answers no functionCall"
            inline = part.get("inlineData")
            if inline is not None:
                base64.b64decode(inline.get("data", ""), validate=True)
        if content.get("role") == "model":
            called = {part["functionCall"].get("name") for part in parts if "functionCall" in part}
    return None


def model_from_path(path: str) -> tuple[str, str]:
    """("gemini-2.5-flash", "generateContent") from "/v1beta/models/gemini-2.5-flash:generateContent"."""
    tail = path.split("/models/", 1)[-1]
    model, _, method = tail.partition(":")
    return model, method


class FakeGeminiServer(FakeProviderServer):
    provider = "gemini"

    def __init__(self) -> None:
        super().__init__()
        # Real quota errors often carry only the RetryInfo detail, no header; set this to answer like them.
        self.retry_info_only = False
        self._counter = 0

    def reset(self) -> None:
        super().reset()
        self.retry_info_only = False

    # ------------------------------------------------------------------ routing
    async def handle(self, request: RecordedRequest, exchange: Exchange, fault: Fault | None) -> None:
        model, method = model_from_path(request.path)
        if request.method != "POST" or method not in ("generateContent", "streamGenerateContent"):
            await exchange.json(
                404, self.error_body(404, f"{request.method} {request.path} is not served here")
            )
            return
        streaming = method == "streamGenerateContent"
        if fault is not None and await self.apply_fault(exchange, fault, streaming):
            return
        problem = contents_problem(request.body if isinstance(request.body, dict) else {})
        if problem is not None:
            # What the real API refuses, this fake refuses too: a test cannot pass on a malformed request.
            await exchange.json(400, self.error_body(400, problem))
            return
        reply = self.next_reply()
        if streaming:
            await self.stream(exchange, reply, model, fault)
        else:
            await exchange.json(200, self.response_body(reply, model))

    async def apply_fault(self, exchange: Exchange, fault: Fault, streaming: bool) -> bool:
        """Answer the fault; True when nothing more should be sent (cut_stream is handled while streaming)."""
        if fault.kind == "status":
            headers: dict[str, str] = {}
            if fault.retry_after is not None and not self.retry_info_only:
                headers["retry-after"] = f"{fault.retry_after:g}"
            await exchange.json(fault.status, self.error_body(fault.status, fault.message, fault), headers)
            return True
        if fault.kind == "slow_first_byte":
            await exchange.sleep(fault.delay)
            return False
        if fault.kind == "hang":
            await exchange.hang()
        if fault.kind == "malformed_json":
            if streaming:
                await exchange.start(200, content_type="text/event-stream")
                await exchange.write(b'data: {"candidates": [{"content": {"parts": [{"text": "oops"\n\n')
                await exchange.close()
            else:
                await exchange.raw(200, b'{"candidates": [{"content": ')
            return True
        if fault.kind == "drop_connection":
            await exchange.abort()
        if fault.kind == "cut_stream" and not streaming:
            # A generate answer cut in the middle of its JSON body.
            body = json.dumps(self.response_body(self.next_reply(), "cut")).encode()
            await exchange.start(200)
            await exchange.write(body[: len(body) // 2])
            await (exchange.abort() if getattr(fault, "abrupt", False) else exchange.close())
            return True
        return False

    # ------------------------------------------------------------------ bodies
    def error_body(self, status: int, message: str, fault: Fault | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": (fault.code if fault and fault.code else None) or GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if fault is not None and fault.retry_after is not None:
            delay = f"{fault.retry_after:g}s"
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
        return {"error": error}

    def next_id(self) -> str:
        self._counter += 1
        return f"fake-gemini-{self._counter}"

    @staticmethod
    def usage_body(reply: Reply, *, final: bool = True) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": reply.input_tokens,
            "totalTokenCount": reply.input_tokens + (reply.output_tokens if final else 0),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.input_tokens}],
        }
        if final:
            usage["candidatesTokenCount"] = reply.output_tokens
        return usage

    @staticmethod
    def function_call_parts(reply: Reply) -> list[dict[str, Any]]:
        parts = []
        for call in reply.tool_calls:
            function_call: dict[str, Any] = {"name": call["name"], "args": call.get("arguments", {})}
            if call.get("id"):
                function_call["id"] = call["id"]
            part: dict[str, Any] = {"functionCall": function_call}
            if call.get("thought_signature"):
                part["thoughtSignature"] = base64.b64encode(call["thought_signature"].encode()).decode()
            parts.append(part)
        return parts

    @staticmethod
    def ending(reply: Reply) -> dict[str, Any]:
        """The candidate fields of the last chunk: finishReason, and a continuation token when scripted."""
        ending: dict[str, Any] = {"finishReason": FakeGeminiServer.finish_reason(reply)}
        token = getattr(reply, "continuation_token", None)
        if token:
            ending["continuationToken"] = base64.b64encode(token.encode()).decode()
        return ending

    @staticmethod
    def finish_reason(reply: Reply) -> str:
        if reply.refusal is not None:
            return "SAFETY"
        return reply.finish_reason or "STOP"

    def envelope(self, reply: Reply, model: str, response_id: str) -> dict[str, Any]:
        return {"modelVersion": reply.model or model, "responseId": response_id}

    def response_body(self, reply: Reply, model: str) -> dict[str, Any]:
        body = self.envelope(reply, model, self.next_id())
        body["usageMetadata"] = self.usage_body(reply)
        block_reason = getattr(reply, "block_reason", None)
        if block_reason:
            body["usageMetadata"] = self.usage_body(reply, final=False)
            body["promptFeedback"] = {"blockReason": block_reason, "safetyRatings": BLOCKED_RATINGS}
            return body
        candidate: dict[str, Any] = {"index": 0, **self.ending(reply)}
        if reply.refusal is not None:
            # A safety stop carries the ratings that tripped it and no content.
            candidate["safetyRatings"] = BLOCKED_RATINGS
        else:
            parts = ([{"text": reply.text}] if reply.text else []) + self.function_call_parts(reply)
            candidate["content"] = {"parts": parts, "role": "model"}
        body["candidates"] = [candidate]
        return body

    async def stream(self, exchange: Exchange, reply: Reply, model: str, fault: Fault | None) -> None:
        await exchange.start(200, content_type="text/event-stream")
        response_id = self.next_id()
        base = self.envelope(reply, model, response_id)
        block_reason = getattr(reply, "block_reason", None)
        if block_reason:
            await exchange.sse(self.response_body(reply, model) | {"responseId": response_id})
            await exchange.close()
            return
        pieces = [] if reply.refusal is not None else reply.pieces()
        cut_after = fault.after_chunks if fault is not None and fault.kind == "cut_stream" else None
        for index, piece in enumerate(pieces):
            if cut_after is not None and index >= cut_after:
                # The stream stops early: no finishReason, no final usage.
                await (exchange.abort() if getattr(fault, "abrupt", False) else exchange.close())
                return
            last = index == len(pieces) - 1
            parts = [{"text": piece}] + (self.function_call_parts(reply) if last else [])
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if last:
                candidate.update(self.ending(reply))
            await exchange.sse(
                base | {"candidates": [candidate], "usageMetadata": self.usage_body(reply, final=last)}
            )
            if reply.chunk_delay and not last:
                await exchange.sleep(reply.chunk_delay)
        if not pieces:
            # Nothing to say (only function calls, or a safety stop): one chunk with the ending.
            candidate = {"index": 0, **self.ending(reply)}
            if reply.refusal is not None:
                candidate["safetyRatings"] = BLOCKED_RATINGS
            else:
                candidate["content"] = {"parts": self.function_call_parts(reply), "role": "model"}
            await exchange.sse(base | {"candidates": [candidate], "usageMetadata": self.usage_body(reply)})
        await exchange.close()


@pytest.fixture(scope="session")
def fake_gemini_server() -> Iterator[FakeGeminiServer]:
    server = FakeGeminiServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_gemini(fake_gemini_server: FakeGeminiServer) -> FakeGeminiServer:
    """The session's fake Gemini server, with no queued replies, faults or recorded requests."""
    fake_gemini_server.reset()
    return fake_gemini_server
