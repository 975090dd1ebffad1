from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The web console at `/`: Django templates and a little vanilla JS over the REST API (no build step)."""

    name = "apps.console"
    label = "console"
