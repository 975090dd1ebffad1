"""An agent run rendered as a Responses API `response` object and as its typed `response.*` stream events,
built with the openai SDK's own types (openai.types.responses).

`id` is `resp_<execution_id>`; output items are the calls to the client's own tools (`function_call`) and the
answer (`message` with one `output_text` part). A run cut by max tokens is `incomplete`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from apps.agents.engine.context import AgentResult
from apps.agents.openai_compat.responses import arguments_text, client_tool_calls, output_text
from apps.agents.openai_compat.responses_api import RESPONSE_ID_PREFIX


def response_id(execution_id: object) -> str:
    return f"{RESPONSE_ID_PREFIX}{execution_id}"


@dataclass(slots=True)
class ResponseEcho:
    """What the request asked, echoed on the response object (as OpenAI does)."""

    model: str
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    text: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    parallel_tool_calls: bool = True


def _usage(result: AgentResult) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=result.input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens=result.output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=result.tokens_used,
    )


def message_item(execution_id: object, text: str, status: str = "completed") -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{execution_id}",
        type="message",
        role="assistant",
        status=status,  # type: ignore[arg-type]
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])]
        if status == "completed"
        else [],
    )


def call_items(result: AgentResult) -> list[ResponseFunctionToolCall]:
    return [
        ResponseFunctionToolCall(
            type="function_call",
            id=f"fc_{call['id']}",
            call_id=str(call["id"]),
            name=str(call["name"]),
            arguments=arguments_text(call),
            status="completed",
        )
        for call in client_tool_calls(result)
    ]


def response_object(
    result: AgentResult | None,
    *,
    execution_id: object,
    echo: ResponseEcho,
    created: float | None = None,
    status: str | None = None,
) -> Response:
    """The response of `result`; with `result` None, the in-progress response the stream starts with."""
    output: list[Any] = []
    incomplete = None
    error = None
    if result is not None:
        calls = call_items(result)
        text = output_text(result.output)
        output.extend(calls)
        if text or not calls:
            output.append(message_item(execution_id, text))
        if status is None:
            status = "completed"
            if result.metadata.get("finish_reason") == "length":
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            if not result.success:
                status = "failed"
                code = result.error.code if result.error else "provider_error"
                error = {
                    "code": "server_error",
                    "message": f"{code}: {result.error.message if result.error else ''}",
                }
    response = Response(
        id=response_id(execution_id),
        object="response",
        created_at=created if created is not None else time.time(),
        model=echo.model,
        status=status or "in_progress",  # type: ignore[arg-type]
        output=output,
        instructions=echo.instructions,
        previous_response_id=echo.previous_response_id,
        store=echo.store,
        tools=echo.tools,  # type: ignore[arg-type]
        tool_choice=echo.tool_choice,
        text=echo.text or {"format": {"type": "text"}},  # type: ignore[arg-type]
        temperature=echo.temperature,
        top_p=echo.top_p,
        max_output_tokens=echo.max_output_tokens,
        metadata=dict(echo.metadata),
        parallel_tool_calls=echo.parallel_tool_calls,
        incomplete_details=incomplete,  # type: ignore[arg-type]
        error=error,  # type: ignore[arg-type]
        usage=_usage(result) if result is not None else None,
    )
    return response


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


class EventFactory:
    """The typed `response.*` events of one streamed response, numbered by `sequence_number`."""

    def __init__(self, *, execution_id: str, echo: ResponseEcho) -> None:
        self.execution_id = execution_id
        self.echo = echo
        self.created = time.time()
        self.sequence = 0
        self.text_started = False
        self.text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, event

    def _response(self, result: AgentResult | None, status: str | None = None) -> dict[str, Any]:
        return dump(
            response_object(
                result, execution_id=self.execution_id, echo=self.echo, created=self.created, status=status
            )
        )

    def start(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield self._event("response.created", response=self._response(None))
        yield self._event("response.in_progress", response=self._response(None))

    def _open_text(self, output_index: int) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.text_started:
            return
        self.text_started = True
        item = dump(message_item(self.execution_id, "", status="in_progress"))
        yield self._event("response.output_item.added", output_index=output_index, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        yield self._event(
            "response.content_part.added",
            item_id=item["id"],
            output_index=output_index,
            content_index=0,
            part=part,
        )

    def delta(self, text: str, output_index: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._open_text(output_index)
        self.text.append(text)
        yield self._event(
            "response.output_text.delta",
            item_id=f"msg_{self.execution_id}",
            output_index=output_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _finish_text(self, text: str, index: int) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._open_text(index)
        item_id = f"msg_{self.execution_id}"
        yield self._event(
            "response.output_text.done",
            item_id=item_id,
            output_index=index,
            content_index=0,
            text=text,
            logprobs=[],
        )
        part = {"type": "output_text", "text": text, "annotations": []}
        yield self._event(
            "response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part
        )
        yield self._event(
            "response.output_item.done", output_index=index, item=dump(message_item(self.execution_id, text))
        )

    def complete(self, result: AgentResult, sent_text: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        calls = call_items(result)
        index = 0
        if sent_text:  # the message item is open already, at index 0
            yield from self._finish_text("".join(self.text), 0)
            index = 1
        for call in calls:
            item = dump(call)
            added = {**item, "arguments": "", "status": "in_progress"}
            yield self._event("response.output_item.added", output_index=index, item=added)
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["arguments"],
            )
            yield self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
            yield self._event("response.output_item.done", output_index=index, item=item)
            index += 1
        text = output_text(result.output)
        if not sent_text and (text or not calls):
            if text:
                yield from self.delta(text, index)
            yield from self._finish_text(text, index)
        response = self._response(result)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=response)

    def failed(self, result: AgentResult | None) -> Iterator[tuple[str, dict[str, Any]]]:
        if result is None:
            response = self._response(None, status="failed")
        else:
            response = self._response(result, status="failed")
            message = result.error.message if result.error else "the run failed"
            response["error"] = {"code": "server_error", "message": message}
        yield self._event("response.failed", response=response)
