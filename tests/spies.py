"""Recording calls to a function while still calling it (e.g. how many thread hops a request makes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def name_of(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def record_calls(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, describe: Callable[..., Any] = lambda *args: args
) -> list[Any]:
    """`owner.name` replaced (for the test) by a wrapper that calls it through and appends `describe(*args)`
    of each call to the list returned."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(describe(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls
