"""Helpers for the pure engine tests: agents over FakePlatforms, with a recorded (instant) sleep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from apps.agents.engine import AgentConfig, BaseAgent, Cooldowns, TaskAgent
from apps.agents.engine.events import StreamEvent
from tests.fakes.platform import FakePlatforms


class RecordedSleep:
    """Stands in for asyncio.sleep in the retry loop: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> RecordedSleep:
    return RecordedSleep()


AgentMaker = Callable[..., BaseAgent]


@pytest.fixture
def make_agent(fake_platforms: FakePlatforms, sleeps: RecordedSleep) -> AgentMaker:
    def make(
        cls: type[BaseAgent] = TaskAgent, *, cooldowns: Cooldowns | None = None, **config: Any
    ) -> BaseAgent:
        config.setdefault("agent_id", "test-agent")
        config.setdefault("name", "Test agent")
        config.setdefault("preferred_platform", "openai")
        return cls(
            AgentConfig(**config),
            fake_platforms.registry,
            # A threshold no test reaches by accident; cooldown tests pass their own.
            cooldowns=cooldowns or Cooldowns(threshold=1000),
            sleep=sleeps,
            rng=lambda: 0.5,
        )

    return make


async def collect(agent: BaseAgent, input_data: dict[str, Any], context: Any = None) -> list[StreamEvent]:
    return [event async for event in agent.execute_streaming(input_data, context)]
