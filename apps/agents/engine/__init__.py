"""The agent engine (seed: apps/agents/engine/). Pure Python: imports nothing from Django; the service layer
passes in a PlatformRegistry and builds an AgentConfig from the Agent row."""

from apps.agents.engine.base_agent import BaseAgent
from apps.agents.engine.context import AgentConfig, AgentContext, AgentResult
from apps.agents.engine.conversational_agent import ConversationalAgent
from apps.agents.engine.cooldown import Cooldowns
from apps.agents.engine.run import HookVeto, RunState
from apps.agents.engine.task_agent import TaskAgent

AGENT_CLASSES: dict[str, type[BaseAgent]] = {"task": TaskAgent, "conversational": ConversationalAgent}

__all__ = [
    "AGENT_CLASSES",
    "AgentConfig",
    "AgentContext",
    "AgentResult",
    "BaseAgent",
    "ConversationalAgent",
    "Cooldowns",
    "HookVeto",
    "RunState",
    "TaskAgent",
]
