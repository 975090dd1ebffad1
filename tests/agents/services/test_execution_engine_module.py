"""`from apps.agents.services import execution_engine` (the seed's import) is the module; its functions are the
instance's methods, looked up live, so patching either one patches what every caller runs."""

from __future__ import annotations

from unittest import mock

from apps.agents.services import execution_engine as module
from apps.agents.services.execution_engine import SEED_API, ExecutionEngine, execution_engine


def test_the_seed_names_are_the_instances_methods():
    assert isinstance(execution_engine, ExecutionEngine)
    for name in ("execute_agent", "execute_streaming", "get_execution_status"):
        assert name in SEED_API
        assert getattr(module, name) == getattr(execution_engine, name)


async def test_patching_the_module_function_patches_the_instance():
    fake = mock.AsyncMock(return_value="patched")
    with mock.patch("apps.agents.services.execution_engine.execute_agent", fake):
        assert await execution_engine.execute_agent("agent", {}) == "patched"
        assert await module.execute_agent("agent", {}) == "patched"
    assert module.execute_agent == execution_engine.execute_agent  # restored: the bound method again
    assert "execute_agent" not in vars(execution_engine)


async def test_patching_the_instance_patches_the_module_function(monkeypatch):
    fake = mock.AsyncMock(return_value={"status": "patched"})
    monkeypatch.setattr(execution_engine, "get_execution_status", fake)
    assert await module.get_execution_status("some-id") == {"status": "patched"}
    monkeypatch.undo()
    assert module.get_execution_status == execution_engine.get_execution_status


def test_monkeypatching_the_module_attribute_is_undone_cleanly(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(module, "execute_streaming", sentinel)
    assert execution_engine.execute_streaming is sentinel
    monkeypatch.undo()
    assert module.execute_streaming == execution_engine.execute_streaming
    assert "execute_streaming" not in vars(execution_engine)
