"""Security tests: alice and bob are plain users; every request is real HTTP through the API's own stack."""

from __future__ import annotations

from tests.agents.api.conftest import (  # noqa: F401 - fixtures shared with the API tests
    _fast_password_hashing,
    alice_client,
    bob_client,
)
