"""TaskAgent: one task, one answer (seed: task_agent.py). Default temperature 0.3.

Structured output: when the agent has an `output_schema`, or the input asks for `output_format: "json"`, the
schema goes to the platform (native structured output where it has one), the answer is parsed as JSON and
validated; an invalid answer is sent back to the model with the validation error, at most `MAX_REASKS`
times, before the run fails with `invalid_output`. Tools: see tool_loop.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

from apps.agents.engine.base_agent import BaseAgent
from apps.agents.engine.context import AgentContext
from apps.agents.engine.conversational_agent import history_messages
from apps.agents.engine.events import OutputDelta, OutputReset
from apps.agents.engine.request_options import new_turns
from apps.agents.engine.run import RunFailure, RunScope
from apps.agents.engine.schema_policy import (
    SchemaLimits,
    SchemaRefused,
    ValidationTimeout,
    build_validator,
    validate_in_thread,
)
from apps.agents.engine.tool_loop import complete_with_tools, handed_back
from apps.platforms.base import ChatMessage, Completion

MAX_REASKS = 2
#: `output_format: "json"` without a schema: any JSON object (what every platform's JSON mode can promise).
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)
REASK = (
    "Your previous answer was not valid: {error}\n"
    "Answer again with only the JSON value, matching the schema exactly, and nothing else."
)


class InvalidOutput(Exception):
    """The model's answer is not the JSON the agent promised. Raised by process_response."""


def parse_json_output(text: str) -> Any:
    """The JSON value in `text`, tolerating a Markdown code fence around it."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return json.loads(stripped)
    except ValueError as exc:
        preview = stripped[:80] + ("..." if len(stripped) > 80 else "")
        raise InvalidOutput(f"not valid JSON ({exc}): {preview!r}") from None
    except RecursionError:  # `[[[[...`: an answer, not a crash of the run
        raise InvalidOutput("not valid JSON: nested too deeply") from None


async def validate_output(value: Any, schema: Mapping[str, Any], limits: SchemaLimits) -> None:
    """InvalidOutput unless `value` matches `schema`. Runs in a worker thread within the policy's time budget
    (apps/agents/engine/schema_policy.py): a validation never blocks the event loop."""
    try:
        error = await validate_in_thread(value, schema, limits)
    except ValidationTimeout as exc:
        raise RunFailure("invalid_output", str(exc)) from None
    except SchemaRefused as exc:
        raise RunFailure("invalid_output", f"the output schema is refused: {exc}") from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidOutput(f"does not match the schema at {where}: {error.message}")


class TaskAgent(BaseAgent):
    default_temperature = 0.3

    #: Set per run from the request's options (a client's response_format json_schema), if any.
    request_schema: Mapping[str, Any] | None = None

    def output_schema(self, input_data: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if self.request_schema is not None:
            return self.request_schema
        if self.config.output_schema:
            return self.config.output_schema
        if input_data.get("output_format") == "json":
            return ANY_JSON_OBJECT
        return None

    async def prepare_prompt(self, input_data: Mapping[str, Any], context: AgentContext) -> str:
        prompt = await super().prepare_prompt(input_data, context)
        schema = self.output_schema(input_data)
        if schema is not None:
            # Platforms without native structured output still get told; the answer is validated anyway.
            prompt += "\n\nRespond with only JSON matching this JSON Schema:\n" + json.dumps(schema)
        elif input_data.get("output_format"):
            prompt += f"\n\nOutput format: {input_data['output_format']}"
        return prompt

    async def process_response(
        self, response: Completion, input_data: Mapping[str, Any], context: AgentContext
    ) -> Any:
        schema = self.output_schema(input_data)
        if schema is None:
            return response.text
        value = parse_json_output(response.text)
        await validate_output(value, schema, self.config.schema_limits)
        return value

    async def respond(self, scope: RunScope) -> Any:
        options = scope.context.options
        if options is not None and options.json_schema is not None:
            # The client's schema replaces the agent's own for this run (README: "Structured output").
            self.request_schema = options.json_schema
        schema = self.output_schema(scope.input_data)
        if schema is not None:
            # The service refuses such an agent before the run; this keeps every other caller (the CLI, a
            # test, a future per-request schema) from sending a schema the policy refuses to a platform.
            try:
                await asyncio.to_thread(build_validator, schema, self.config.schema_limits)
            except SchemaRefused as exc:
                raise RunFailure("invalid_output", f"the output schema is refused: {exc}") from None
        prompt = await self.prepare_prompt(scope.input_data, scope.context)
        turns = new_turns(options.messages if options is not None else None, prompt)
        scope.state.transcript.extend(turns)
        # Earlier turns given in the context (the seed's conversation_history, a conversation's messages, or an
        # OpenAI-style chat) come first: a task agent keeps no window or summary, but it must not lose what
        # the caller sent.
        messages = [*history_messages(scope.context.conversation_history), *turns]
        # Structured answers stream as they are written, like text, to clients that can be told to take
        # text back (an OutputReset before a re-ask); the others get the validated JSON as one delta.
        stream_json = options is None or options.stream_structured
        scope.retractable = schema is not None and stream_json
        for reask in range(MAX_REASKS + 1):
            streamed_before = len(scope.state.streamed)
            completion = await complete_with_tools(
                self, scope, messages, json_schema=schema, stream_text=schema is None or stream_json
            )
            scope.state.metadata["finish_reason"] = completion.finish_reason
            if completion.logprobs is not None:
                scope.state.metadata["logprobs"] = list(completion.logprobs)
            if completion.tool_calls:
                return await handed_back(scope, completion)
            try:
                output = await self.process_response(completion, scope.input_data, scope.context)
            except InvalidOutput as exc:
                if reask == MAX_REASKS:
                    raise RunFailure(
                        "invalid_output", f"the output was still invalid after {MAX_REASKS} re-asks: {exc}"
                    ) from None
                scope.state.metadata["reasks"] = reask + 1
                messages.append(ChatMessage(role="assistant", content=completion.text))
                messages.append(ChatMessage(role="user", content=REASK.format(error=exc)))
                if len(scope.state.streamed) > streamed_before:
                    del scope.state.streamed[streamed_before:]
                    await scope.send(OutputReset(str(exc)))
                continue
            text = completion.text if schema is None else json.dumps(output, ensure_ascii=False)
            scope.state.transcript.append(ChatMessage(role="assistant", content=text))
            if schema is not None and scope.streaming and len(scope.state.streamed) == streamed_before:
                scope.state.streamed.append(text)
                await scope.send(OutputDelta(text))
            return output
        raise AssertionError("unreachable")  # pragma: no cover
