from django.apps import AppConfig


class SecurityConfig(AppConfig):
    """Cross-cutting protections: the real client address, login lockout answers, and deploy checks that
    know our middleware (README: Security)."""

    name = "apps.security"
    label = "security"

    def ready(self) -> None:
        from apps.security import checks  # noqa: F401  (registers the checks)
