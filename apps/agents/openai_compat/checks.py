"""What a request asks of this particular agent, checked before the run: a 400 naming the parameter instead
of a parameter that a platform silently drops or a run that fails half way.

- A generation option (stop, seed, top_p, penalties, user, logprobs, images, tool_choice) must be supported by the
  agent's first platform (fallback platforms that do not support it are skipped by the engine).
- A client tool may not share a name with one of the agent's own tools.
- A per-request JSON schema needs an agent that produces structured output (a task agent).
"""

from __future__ import annotations

from typing import Any

from apps.agents.models import Agent
from apps.agents.openai_compat.errors import invalid
from apps.agents.openai_compat.schemas import ChatRequest
from apps.platforms.base import CompletionRequest
from apps.platforms.errors import PlatformError


def first_platform(agent: Agent) -> Any:
    """The platform the run will try first, or None when none is available (the run then fails with its own
    error, as any run does)."""
    from apps.platforms.registry import get_registry

    registry = get_registry()
    for name in registry.chain(agent.preferred_platform or None):
        try:
            return registry.get(name)
        except PlatformError:
            continue
    return None


def check_request_fits_agent(agent: Agent, chat: ChatRequest) -> None:
    own = set(agent.tools or ())
    for index, tool in enumerate(chat.client_tools):
        if tool.name in own:
            raise invalid(
                f"the agent has its own tool named {tool.name!r}; rename yours",
                param=f"tools[{index}].function.name",
                code="tool_name_conflict",
            )
    if chat.response_schema is not None and agent.agent_type != "task":
        raise invalid(
            "a json_schema response format needs a task agent (a conversational agent answers in text)",
            param="response_format",
            code="unsupported_value",
        )
    if chat.temperature is not None:
        platform = first_platform(agent)
        if platform is not None and "temperature" in platform.ignored_fields:
            raise invalid(
                f"`temperature` is not supported by this agent's platform ({platform.name})",
                param="temperature",
                code="unsupported_parameter",
            )
    probe = CompletionRequest(
        model="",
        messages=chat.messages or (),
        sampling=chat.sampling,
        tool_choice=chat.tool_choice,
    )
    if not probe.options_used():
        return
    platform = first_platform(agent)
    if platform is None:
        return
    for option in platform.unsupported(probe):
        raise invalid(
            f"`{option}` is not supported by this agent's platform ({platform.name})",
            param=chat.option_params.get(option, option),
            code="unsupported_parameter",
        )
