"""Where Responses API state lives: a stored response (`store`, the default) is an execution on a
Conversation of its own; `previous_response_id` continues that conversation. Reads are selectors, the one
write (a new conversation) goes through the conversations service.

Only the latest response of a conversation can be continued: the conversation holds one line of turns, and
continuing an earlier response would silently answer from the later ones too (a branch is a 400 instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from apps.agents.models import Agent, AgentExecution, Conversation, Message
from apps.agents.openai_compat.errors import OpenAIError, invalid
from apps.agents.openai_compat.responses_api import RESPONSE_ID_PREFIX
from apps.agents.selectors import parse_uuid
from apps.agents.services.conversations import conversation_create


@dataclass(frozen=True, slots=True)
class Previous:
    conversation_id: str
    #: The tool calls made in the conversation, by id (a function_call_output item must answer one).
    calls: dict[str, str]


def not_found(response_id: str, param: str | None = None) -> OpenAIError:
    shown = response_id if len(response_id) <= 100 else "(invalid)"
    return OpenAIError(
        f"Response with id '{shown}' not found.",
        status=404 if param is None else 400,
        param=param,
        code="not_found",
    )


def stored_execution(user: Any, response_id: str) -> AgentExecution | None:
    """The caller's own stored response (staff included: a response belongs to its caller)."""
    if not response_id.startswith(RESPONSE_ID_PREFIX):
        return None
    pk = parse_uuid(response_id.removeprefix(RESPONSE_ID_PREFIX))
    if pk is None:
        return None
    execution = AgentExecution.objects.select_related("agent").filter(pk=pk, user=user).first()
    if execution is None or not stored(execution):
        return None
    return execution


def stored(execution: AgentExecution) -> bool:
    record = ((execution.context or {}).get("metadata") or {}).get("openai_compat") or {}
    return bool((record.get("responses") or {}).get("store"))


def _previous(user: Any, response_id: str) -> Previous:
    execution = stored_execution(user, response_id)
    if execution is None or execution.conversation_id is None:
        raise not_found(response_id, param="previous_response_id")
    messages = Message.objects.filter(conversation_id=execution.conversation_id)
    last = messages.order_by("-position").values_list("execution_id", flat=True).first()
    if last != execution.pk:
        raise invalid(
            "only the latest response of a conversation can be continued", param="previous_response_id"
        )
    calls: dict[str, str] = {}
    for tool_calls in messages.filter(role="assistant").values_list("tool_calls", flat=True):
        calls.update((str(call.get("id")), str(call.get("name"))) for call in tool_calls or ())
    return Previous(conversation_id=str(execution.conversation_id), calls=calls)


def _new_conversation(user: Any, agent: Agent) -> str:
    return str(conversation_create(owner=user, agent=agent).pk)


def _forget(conversation_id: str) -> None:
    Conversation.objects.filter(pk=conversation_id, messages__isnull=True).delete()


previous_conversation = sync_to_async(_previous)
new_conversation = sync_to_async(_new_conversation)
forget_conversation = sync_to_async(_forget)
get_stored_execution = sync_to_async(stored_execution)
