"""Services: the only layer that touches both the ORM and the engine.

`from apps.agents.services import execution_engine` works as in the seed. Python binds a submodule as an
attribute of its package, so that name is the module `execution_engine.py`, whose seed functions
(`execute_agent`, `execute_streaming`, `get_execution_status`, ...) are live views of its `execution_engine`
instance: calling, patching or monkeypatching either one is the same as doing it to the other.
"""

from apps.agents.services.state_manager import StateManager, state_manager

__all__ = ["StateManager", "state_manager"]
