"""ConversationalAgent: multi-turn chat over a history (seed: conversational_agent.py). Temperature 0.8.

The model sees the conversation summary (in the system prompt) and the last `history_window` messages of the
history that the summary does not cover. When older messages fall outside the window they are folded into a
new summary by a separate, small summarisation request; the new summary and how many history messages it
covers are returned in `result.metadata["summary"]` = {"text", "upto"}, for the caller to store, so the
next run starts from it instead of summarising the same messages again.

The window never starts on a tool result or an assistant turn: it is widened back to the user message that
began that exchange, so a tool call is never separated from its result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from apps.agents.engine.base_agent import BaseAgent
from apps.agents.engine.request_options import new_turns
from apps.agents.engine.run import RunFailure, RunScope
from apps.agents.engine.tool_loop import complete_with_tools, handed_back
from apps.platforms.base import ChatMessage, ToolCall

SUMMARY_SYSTEM_PROMPT = (
    "You maintain the running summary of a conversation between a user and an assistant. Merge the "
    "previous summary with the new messages into one concise summary (at most 200 words) that keeps names, "
    "facts, numbers, decisions and open questions. Reply with the summary only."
)
SUMMARY_MAX_TOKENS = 400
SUMMARY_TEMPERATURE = 0.2


def history_messages(history: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    """Context history dicts ({"role", "content"}, optionally "tool_calls", "tool_call_id", "name")."""
    messages = []
    # Stored tool results carry only the call id; some platforms (Gemini) also want the tool's name.
    call_names: dict[str, str] = {}
    for item in history:
        calls = tuple(
            ToolCall(id=str(c.get("id", "")), name=str(c.get("name", "")), arguments=c.get("arguments") or {})
            for c in item.get("tool_calls") or ()
        )
        call_names.update((call.id, call.name) for call in calls)
        call_id = item.get("tool_call_id") or None
        messages.append(
            ChatMessage(
                role=item["role"],
                content=str(item.get("content") or ""),
                tool_calls=calls,
                tool_call_id=call_id,
                name=item.get("name") or call_names.get(call_id or "") or None,
            )
        )
    return messages


def window_start(history: Sequence[ChatMessage], window: int) -> int:
    """Index of the first history message inside the window (0: everything fits)."""
    if len(history) <= window:
        return 0
    start = len(history) - max(1, window)
    while start > 0 and history[start].role != "user":
        start -= 1
    return start


def transcript_text(messages: Sequence[ChatMessage]) -> str:
    lines = []
    for message in messages:
        if message.role == "tool":
            lines.append(f"tool {message.name or ''} result: {message.content}")
            continue
        text = message.content
        if message.tool_calls:
            calls = ", ".join(f"{c.name}({dict(c.arguments)})" for c in message.tool_calls)
            text = f"{text} [called {calls}]".strip()
        lines.append(f"{message.role}: {text}")
    return "\n".join(lines)


class ConversationalAgent(BaseAgent):
    default_temperature = 0.8

    def system_prompt_with(self, summary: str) -> str:
        if not summary:
            return self.config.system_prompt
        return f"{self.config.system_prompt}\n\nSummary of the earlier conversation:\n{summary}".lstrip()

    async def generate_summary(
        self, scope: RunScope, previous_summary: str, messages: Sequence[ChatMessage]
    ) -> str:
        """Conversation summary generation: the previous summary plus `messages`, folded into one text."""
        parts = []
        if previous_summary:
            parts.append(f"Previous summary:\n{previous_summary}")
        parts.append(f"New messages:\n{transcript_text(messages)}")
        completion = await self.call_model(
            scope,
            [ChatMessage(role="user", content="\n\n".join(parts))],
            system_prompt=SUMMARY_SYSTEM_PROMPT,
            stream_text=False,
            temperature=SUMMARY_TEMPERATURE,
            max_tokens=SUMMARY_MAX_TOKENS,
            request_options=False,  # the client's stop sequences or logprobs are about its answer
        )
        return completion.text.strip()

    async def respond(self, scope: RunScope) -> Any:
        context = scope.context
        options = context.options
        history = history_messages(context.conversation_history)
        summary = context.conversation_summary
        start = window_start(history, self.config.history_window)
        if start:
            try:
                summary = await self.generate_summary(scope, summary, history[:start])
                scope.state.metadata["summary"] = {"text": summary, "upto": start}
            except RunFailure as failure:
                # The answer can still be given from the window and the old summary; the older messages
                # stay unsummarised (nothing is stored) and the next run tries to fold them again.
                self._log(scope, logging.WARNING, "conversation summary failed: %s", failure.message)
                scope.state.metadata["summary_error"] = failure.message
        prompt = await self.prepare_prompt(scope.input_data, context)
        turns = new_turns(options.messages if options is not None else None, prompt)
        scope.state.transcript.extend(turns)
        messages = [*history[start:], *turns]
        completion = await complete_with_tools(
            self, scope, messages, system_prompt=self.system_prompt_with(summary)
        )
        if completion.logprobs is not None:
            scope.state.metadata["logprobs"] = list(completion.logprobs)
        if completion.tool_calls:
            return await handed_back(scope, completion)
        scope.state.transcript.append(ChatMessage(role="assistant", content=completion.text))
        scope.state.metadata["finish_reason"] = completion.finish_reason
        return await self.process_response(completion, scope.input_data, context)
