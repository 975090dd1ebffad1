"""Services: the only layer that touches both the ORM and the engine.

`from apps.agents.services import execution_engine` works as in the seed. Python binds a submodule as an
attribute of its package, so that name is the module `execution_engine.py`; the module re-exports the
methods of its `execution_engine` instance so that `execution_engine.execute_agent(...)` works either way.
"""

from apps.agents.services.state_manager import StateManager, state_manager

__all__ = ["StateManager", "state_manager"]
