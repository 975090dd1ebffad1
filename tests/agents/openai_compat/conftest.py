"""OpenAI-compatible endpoint tests: the official `openai` SDK against the project under a live uvicorn
(`live_server_url`, tests/fakes/live_server.py), agents answered by the fake providers (`fake_registry`)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from rest_framework.authtoken.models import Token

from apps.agents.catalog.loader import CatalogEntry, load_catalog
from apps.agents.catalog.seed import seed_catalog
from apps.agents.services.execution_engine import execution_engine


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The engine's retry sleep, instant and recorded (the live server runs in this process)."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(execution_engine, "sleep", sleep)
    return delays


def token_for(user) -> str:  # type: ignore[no-untyped-def]
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def client_for(live_server_url: str) -> Callable[..., openai.OpenAI]:
    """`client_for(user)`: the official SDK, pointed at the live server with the user's API token. SDK
    retries are off unless a test asks for them, so that every request is exactly one run."""

    def make(user, *, max_retries: int = 0, api_key: str | None = None) -> openai.OpenAI:  # type: ignore[no-untyped-def]
        return openai.OpenAI(
            base_url=f"{live_server_url}/v1",
            api_key=api_key if api_key is not None else token_for(user),
            max_retries=max_retries,
            timeout=20.0,
        )

    return make


@pytest.fixture
def business_analyst_entry() -> CatalogEntry:
    return next(entry for entry in load_catalog() if entry.agent_id == "business-analyst")


@pytest.fixture
def business_analyst(business_analyst_entry: CatalogEntry, transactional_db: None):  # type: ignore[no-untyped-def]
    """The catalog's Business Analyst, seeded as `manage.py seed_agents` does (a shared agent)."""
    from apps.agents.models import Agent

    seed_catalog(entries=[business_analyst_entry])
    return Agent.objects.get(agent_id="business-analyst")
