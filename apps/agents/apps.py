from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "apps.agents"
    label = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers that drop cached token -> user entries (api/authentication.py), cached agents
        # (agent_cache.py) and cached budgets (services/budget_cache.py): in every process that saves, not
        # only in those that served a request.
        from apps.agents import agent_cache  # noqa: F401
        from apps.agents.api import authentication  # noqa: F401
        from apps.agents.services import budget_cache  # noqa: F401

        # Project tools register themselves when their modules are imported (settings.AGENT_TOOL_MODULES).
        from apps.agents.services.tools import load_tool_modules

        load_tool_modules()
