"""`fake_registry`: a PlatformRegistry over the three fake provider servers, installed process-wide.

Real adapters, real SDKs, real HTTP on 127.0.0.1, real pricing: only the provider at the other end is fake.
Fallback order openai -> anthropic -> gemini; the local model is not part of it (tests that want it build a
LocalPlatform themselves), so no test pays for llama.cpp by accident.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from apps.platforms.pricing import Pricing
from apps.platforms.registry import PlatformRegistry, installed_registry, set_registry
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

logger = logging.getLogger(__name__)

# Recognisable secrets: tests assert that none of them ever shows up in an error, a log line or a response.
OPENAI_TEST_KEY = "sk-test-SECRET-1234567890"
ANTHROPIC_TEST_KEY = "sk-ant-test-SECRET-1234567890"
GEMINI_TEST_KEY = "gemini-test-SECRET-1234567890"
TEST_KEYS = (OPENAI_TEST_KEY, ANTHROPIC_TEST_KEY, GEMINI_TEST_KEY)
# Short, so that a test hitting a `hang` fault without its own request timeout fails in seconds, not a minute.
FAKE_TIMEOUT = 10.0


def build_fake_registry(
    openai: FakeOpenAIServer, anthropic: FakeAnthropicServer, gemini: FakeGeminiServer
) -> PlatformRegistry:
    # Imported here, not at plugin load, so that collecting the suite does not import three SDKs.
    from apps.platforms.anthropic import AnthropicPlatform
    from apps.platforms.gemini import GeminiPlatform
    from apps.platforms.openai import OpenAIPlatform

    return PlatformRegistry(
        {
            "openai": OpenAIPlatform(
                api_key=OPENAI_TEST_KEY,
                base_url=openai.url + "/v1",
                default_model="gpt-4o-mini",
                timeout=FAKE_TIMEOUT,
            ),
            "anthropic": AnthropicPlatform(
                api_key=ANTHROPIC_TEST_KEY,
                base_url=anthropic.url,
                default_model="claude-3-5-haiku-latest",
                timeout=FAKE_TIMEOUT,
            ),
            "gemini": GeminiPlatform(
                api_key=GEMINI_TEST_KEY,
                base_url=gemini.url,
                default_model="gemini-2.0-flash",
                timeout=FAKE_TIMEOUT,
            ),
        },
        fallback_order=("openai", "anthropic", "gemini"),
        pricing=Pricing(),
    )


@contextmanager
def registry_installed(registry: PlatformRegistry) -> Iterator[PlatformRegistry]:
    """`registry` as the process's platforms for the block, the one before it put back after."""
    previous = installed_registry()
    set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(previous)


@pytest.fixture
async def fake_registry(
    fake_openai: FakeOpenAIServer, fake_anthropic: FakeAnthropicServer, fake_gemini: FakeGeminiServer
) -> AsyncIterator[PlatformRegistry]:
    """Async so that the SDK clients are closed at the end of the test, each on the loop that opened its
    connections: this test's here, the live server's on the live server's thread (see PerLoopClient.aclose).
    Left to the garbage collector, the SDK would close a client on whatever loop happens to be running in the
    collecting thread, reaching into the live server's selector from the wrong thread. (A sync test's own
    finished loops have nothing left to close.)"""
    with registry_installed(build_fake_registry(fake_openai, fake_anthropic, fake_gemini)) as registry:
        yield registry
    for name in registry.names():
        try:
            await registry.get(name).aclose()
        except RuntimeError as exc:  # "Event loop is closed": used from another loop, nothing to do
            logger.debug("fake registry: %s client not closed: %s", name, exc)
