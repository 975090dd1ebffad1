"""The registry built from settings, and `manage.py platforms`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.platforms.base import ChatMessage, Chunk, Completion, CompletionRequest, Platform, Usage
from apps.platforms.errors import PlatformError
from apps.platforms.registry import (
    OPENAI_PLACEHOLDER_KEY,
    PlatformRegistry,
    build_registry_from_settings,
    get_registry,
    installed_registry,
    set_registry,
)
from tests.fakes.registry import TEST_KEYS
from tests.fakes.server import Fault

REPO = Path(__file__).resolve().parents[2]
OPENAI_KEY = "sk-settings-SECRET-abcdef123456"
ANTHROPIC_KEY = "sk-ant-settings-SECRET-abcdef123456"
GEMINI_KEY = "gem-settings-SECRET-abcdef123456"


@pytest.fixture
def nothing_configured(settings) -> Iterator[object]:
    """Settings with no platform at all; the process registry is rebuilt from them on first use."""
    settings.OPENAI_API_KEY = settings.OPENAI_BASE_URL = ""
    settings.ANTHROPIC_API_KEY = settings.ANTHROPIC_BASE_URL = ""
    settings.GEMINI_API_KEY = settings.GEMINI_BASE_URL = ""
    settings.LOCAL_ENABLED = False
    settings.LOCAL_MODEL_PATH = ""
    settings.DEFAULT_PLATFORM = ""
    settings.PLATFORM_FALLBACK_ORDER = ["openai", "anthropic", "gemini", "local"]
    settings.MODEL_PRICES = {}
    previous = installed_registry()
    set_registry(None)
    yield settings
    set_registry(previous)


def test_only_configured_platforms_are_present(nothing_configured) -> None:
    nothing_configured.ANTHROPIC_API_KEY = ANTHROPIC_KEY

    registry = build_registry_from_settings()

    assert registry.names() == ["anthropic"]
    assert "openai" not in registry and "gemini" not in registry and "local" not in registry
    assert registry.get("anthropic").default_model == nothing_configured.ANTHROPIC_DEFAULT_MODEL


@pytest.mark.parametrize(
    ("missing", "env_var"),
    [("openai", "OPENAI_API_KEY"), ("gemini", "GEMINI_API_KEY"), ("local", "LOCAL_ENABLED")],
)
def test_asking_for_a_missing_platform_names_the_setting(nothing_configured, missing, env_var) -> None:
    nothing_configured.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    registry = build_registry_from_settings()

    with pytest.raises(PlatformError) as caught:
        registry.get(missing)

    assert caught.value.kind == "unavailable" and not caught.value.retryable
    assert env_var in caught.value.message
    assert "configured: anthropic" in caught.value.message


def test_chain_follows_the_configured_fallback_order_and_default(nothing_configured) -> None:
    nothing_configured.OPENAI_API_KEY = OPENAI_KEY
    nothing_configured.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    nothing_configured.GEMINI_API_KEY = GEMINI_KEY
    nothing_configured.LOCAL_ENABLED = True
    nothing_configured.PLATFORM_FALLBACK_ORDER = ["gemini", "local", "openai", "anthropic"]
    nothing_configured.DEFAULT_PLATFORM = "openai"

    registry = build_registry_from_settings()

    assert registry.names() == ["gemini", "local", "openai", "anthropic"]
    assert registry.default_platform() == "openai"
    assert registry.chain(None) == ["openai", "gemini", "local", "anthropic"]
    assert registry.chain("anthropic") == ["anthropic", "gemini", "local", "openai"]


def test_unconfigured_default_platform_falls_back_to_the_order(nothing_configured) -> None:
    nothing_configured.GEMINI_API_KEY = GEMINI_KEY
    nothing_configured.LOCAL_ENABLED = True
    nothing_configured.DEFAULT_PLATFORM = "anthropic"

    registry = build_registry_from_settings()

    assert registry.default_platform() == "gemini"
    assert registry.chain(None) == ["gemini", "local"]


def test_each_platform_gets_its_settings(nothing_configured, tmp_path) -> None:
    nothing_configured.OPENAI_API_KEY = OPENAI_KEY
    nothing_configured.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    nothing_configured.OPENAI_DEFAULT_MODEL = "gpt-4o"
    nothing_configured.LOCAL_ENABLED = True
    nothing_configured.LOCAL_MODEL_PATH = str(tmp_path / "model.gguf")
    nothing_configured.LOCAL_DEFAULT_MODEL = "my-gguf"
    nothing_configured.LOCAL_CONTEXT_TOKENS = 512
    nothing_configured.LOCAL_THREADS = 1

    registry = build_registry_from_settings()

    openai = registry.get("openai").info()
    assert (openai.default_model, openai.base_url) == ("gpt-4o", "http://127.0.0.1:9/v1")
    local = registry.get("local")
    assert local.info().default_model == "my-gguf"
    assert local.info().extra == {"model_path": str(tmp_path / "model.gguf"), "n_ctx": 512, "n_threads": 1}


def test_model_prices_setting_is_used_for_costs(nothing_configured) -> None:
    nothing_configured.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    nothing_configured.MODEL_PRICES = {"openai:llama3.2": {"input": "0.5", "output": "1.5"}}

    registry = build_registry_from_settings()

    assert registry.cost("openai", "llama3.2", Usage(2_000_000, 1_000_000)) == Decimal("2.5")
    assert registry.cost("openai", "gpt-4o-mini", Usage(1_000_000, 0)) == Decimal("0.15")


async def test_openai_compatible_server_needs_no_key(nothing_configured, fake_openai) -> None:
    """Ollama and friends: only OPENAI_BASE_URL is set; the adapter is built and talks to the server."""
    nothing_configured.OPENAI_BASE_URL = fake_openai.url + "/v1"
    nothing_configured.OPENAI_DEFAULT_MODEL = "llama3.2"
    registry = build_registry_from_settings()
    try:
        completion = await registry.get("openai").generate(
            CompletionRequest(model="llama3.2", messages=[ChatMessage(role="user", content="hi")])
        )
    finally:
        await registry.aclose()

    assert registry.names() == ["openai"]
    assert completion.text == "Hello from the fake provider."
    sent = fake_openai.requests[0]
    assert sent.body["model"] == "llama3.2"
    # The SDK refuses to run without a key; a key-less server gets the harmless placeholder.
    assert sent.headers.get("authorization") == f"Bearer {OPENAI_PLACEHOLDER_KEY}"


def test_get_registry_builds_once_from_settings(nothing_configured) -> None:
    nothing_configured.GEMINI_API_KEY = GEMINI_KEY

    first = get_registry()

    assert first is get_registry()
    assert first.names() == ["gemini"]


def _modules_after_build(env: dict[str, str]) -> set[str]:
    code = (
        "import sys, django; django.setup();"
        "from apps.platforms.registry import build_registry_from_settings as b; r = b();"
        "print(' '.join(m for m in ('openai', 'anthropic', 'google.genai', 'llama_cpp', 'genai_prices')"
        " if m in sys.modules))"
    )
    blank = {
        k: ""
        for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MODEL_PRICES")
    }
    full_env = {**os.environ, **blank, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    full_env["MODEL_PRICES"] = full_env["MODEL_PRICES"] or "{}"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_no_sdk_is_imported_when_nothing_is_configured() -> None:
    assert _modules_after_build({"LOCAL_ENABLED": "false"}) == set()


def test_only_the_configured_sdk_is_imported_and_the_local_model_loads_lazily() -> None:
    loaded = _modules_after_build({"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "LOCAL_ENABLED": "true"})

    assert "anthropic" in loaded
    assert not loaded & {"openai", "google.genai", "llama_cpp"}


# ------------------------------------------------------------------------------- manage.py platforms


def run_platforms(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("platforms", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_command_lists_platforms_models_urls_and_order_but_no_key(fake_registry, fake_openai) -> None:
    output, error = run_platforms()

    assert error is None
    lines = output.splitlines()
    assert lines[0].startswith("openai (default)  model=gpt-4o-mini  url=" + fake_openai.url + "/v1")
    assert lines[1].startswith("anthropic  model=claude-3-5-haiku-latest")
    assert lines[2].startswith("gemini  model=gemini-2.0-flash")
    assert "Fallback order: openai -> anthropic -> gemini" in output
    assert "Not configured: local (set LOCAL_ENABLED=true)" in output
    assert "ping=" not in output
    assert not any(key in output for key in TEST_KEYS)


def test_command_ping_reports_each_platform(
    nothing_configured, fake_openai, fake_anthropic, fake_gemini
) -> None:
    """Built from settings pointing at the fakes, so the command owns (and closes) the SDK clients."""
    nothing_configured.OPENAI_API_KEY = OPENAI_KEY
    nothing_configured.OPENAI_BASE_URL = fake_openai.url + "/v1"
    nothing_configured.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    nothing_configured.ANTHROPIC_BASE_URL = fake_anthropic.url
    nothing_configured.GEMINI_API_KEY = GEMINI_KEY
    nothing_configured.GEMINI_BASE_URL = fake_gemini.url
    fake_anthropic.fail(Fault(kind="status", status=503))

    output, error = run_platforms("--ping")

    assert error is not None and "anthropic" in str(error)
    by_name = {line.split()[0]: line for line in output.splitlines()[:3]}
    assert "ping=ok" in by_name["openai"] and "ping=ok" in by_name["gemini"]
    assert "ping=error" in by_name["anthropic"] and "503" in by_name["anthropic"]
    # One one-token request went to each server.
    sent = fake_openai.requests[0].body
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 1
    assert len(fake_gemini.requests) == 1
    assert not any(key in output for key in (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY))
    # The command built this registry, so it closed it and the next use builds a fresh one.
    assert installed_registry() is None


def test_command_never_prints_a_configured_key_even_if_the_provider_echoes_it(
    nothing_configured, fake_openai
) -> None:
    nothing_configured.OPENAI_API_KEY = OPENAI_KEY
    nothing_configured.OPENAI_BASE_URL = fake_openai.url + "/v1"
    fake_openai.fail(Fault(kind="status", status=401, message=f"Incorrect API key provided: {OPENAI_KEY}"))

    output, error = run_platforms("--ping")

    assert error is not None
    assert "ping=error" in output and "401" in output
    assert OPENAI_KEY not in output and OPENAI_KEY not in str(error)


class LeakyPlatform(Platform):
    """An adapter that forgets to scrub the key from its error: the command must still not print it."""

    name = "openai"
    default_model = "gpt-4o-mini"

    async def generate(self, request: CompletionRequest) -> Completion:
        raise PlatformError(f"bad key {OPENAI_KEY}", provider="openai", kind="auth", retryable=False)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError
        yield Chunk()


def test_command_scrubs_configured_keys_from_error_text(nothing_configured) -> None:
    nothing_configured.OPENAI_API_KEY = OPENAI_KEY
    set_registry(PlatformRegistry({"openai": LeakyPlatform()}))

    output, error = run_platforms("--ping")

    assert error is not None
    assert "ping=error" in output and "bad key [redacted]" in output
    assert OPENAI_KEY not in output


def test_command_with_nothing_configured_says_how_to_enable(nothing_configured) -> None:
    output, error = run_platforms("--ping")

    assert error is None
    assert output.startswith("No AI platform is configured.")
    assert "Not configured: openai (set OPENAI_API_KEY" in output
    assert "Not configured: local (set LOCAL_ENABLED=true)" in output


async def test_fake_registry_wires_real_adapters_to_the_fakes_with_real_pricing(fake_registry) -> None:
    assert get_registry() is fake_registry
    assert fake_registry.chain(None) == ["openai", "anthropic", "gemini"]
    for name in fake_registry.names():
        platform = fake_registry.get(name)
        completion = await platform.generate(
            CompletionRequest(model=platform.default_model, messages=[ChatMessage(role="user", content="hi")])
        )

        assert completion.text == "Hello from the fake provider."
        assert completion.usage == Usage(11, 7)
        assert fake_registry.cost(name, platform.default_model, completion.usage) > 0
