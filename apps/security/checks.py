"""System checks: Django's deploy checks made to see our middleware, and TRUSTED_PROXIES' syntax.

Django's security checks find a middleware by its dotted path in MIDDLEWARE. config/middleware.py
subclasses Django's security, session, CSRF and X-Frame-Options middleware (to run their hooks without a
thread hop under ASGI), so Django
1. reports them missing: security.W001, W002 and W003, which is false;
2. believing them absent, passes without looking every check that depends on them: HSTS (W004, W005, W021),
   nosniff (W006), the SSL redirect (W008), X-Frame-Options DENY (W019), the Referrer-Policy (W022/E022),
   the Cross-Origin-Opener-Policy (E024), and the session and CSRF cookie checks as the middleware sees them
   (W011/W012, W014/W015, W016).

`check_middleware_as_subclassed` runs those same Django check functions against MIDDLEWARE as Django would
see it if each of our classes were written with the path of the Django class it subclasses (issubclass, so
a class that does not inherit Django's behaviour is not recognised). What they find keeps Django's ids,
except the three "missing" warnings: those ids are silenced in settings (SILENCED_SYSTEM_CHECKS) because
of (1), and silencing applies to an id wherever it comes from, so ours reports them as
agentplatform.W001-W003 instead. Nothing is weakened: a check Django would skip is run, and a missing
middleware is still reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks.security import base, csrf, sessions
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string

from apps.security.client_address import trusted_networks

DJANGO_MIDDLEWARE: dict[str, type] = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
}

# Django's checks that look for one of those middlewares in MIDDLEWARE.
MIDDLEWARE_DEPENDENT_CHECKS: tuple[Callable[..., list[CheckMessage]], ...] = (
    base.check_security_middleware,
    base.check_xframe_options_middleware,
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_xframe_deny,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
    sessions.check_session_cookie_secure,
    sessions.check_session_cookie_httponly,
    csrf.check_csrf_middleware,
    csrf.check_csrf_cookie_secure,
)

#: Django's "middleware missing" ids, silenced in settings; reported by us under these ids instead.
SILENCED_AS: dict[str, str] = {
    "security.W001": "agentplatform.W001",
    "security.W002": "agentplatform.W002",
    "security.W003": "agentplatform.W003",
}


def middleware_as_django_sees_it(middleware: Iterable[str]) -> list[str]:
    """MIDDLEWARE with each subclass of a Django middleware replaced by the Django class's path."""
    seen: list[str] = []
    for path in middleware:
        replacement = path
        if path not in DJANGO_MIDDLEWARE:
            try:
                cls = import_string(path)
            except ImportError:
                cls = None  # Django reports an unimportable middleware itself
            for django_path, django_class in DJANGO_MIDDLEWARE.items():
                if isinstance(cls, type) and issubclass(cls, django_class):
                    replacement = django_path
                    break
        seen.append(replacement)
    return seen


def _renamed(message: CheckMessage) -> CheckMessage:
    new_id = SILENCED_AS.get(message.id or "")
    if new_id is None:
        return message
    return type(message)(message.msg, hint=message.hint, obj=message.obj, id=new_id)


def run_with_middleware(
    checks: Sequence[Callable[..., list[CheckMessage]]], middleware: list[str], app_configs: Any
) -> list[CheckMessage]:
    """Django's own checks, as they would answer for this MIDDLEWARE, minus what they already reported
    for the real one (so nothing is reported twice)."""
    from django.test.utils import override_settings

    messages: list[CheckMessage] = []
    for check in checks:
        already = {message.id for message in check(app_configs)} - set(SILENCED_AS)
        with override_settings(MIDDLEWARE=middleware):
            found = check(app_configs)
        messages.extend(_renamed(message) for message in found if message.id not in already)
    return messages


@register(Tags.security, deploy=True)
def check_middleware_as_subclassed(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    seen = middleware_as_django_sees_it(settings.MIDDLEWARE)
    return run_with_middleware(MIDDLEWARE_DEPENDENT_CHECKS, seen, app_configs)


@register(Tags.security)
def check_trusted_proxies(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    try:
        trusted_networks(tuple(settings.TRUSTED_PROXIES))
    except ValueError as exc:
        return [
            Error(
                f"TRUSTED_PROXIES has an entry that is neither an IP address nor a network: {exc}",
                hint="Use addresses or CIDR networks, comma-separated: 10.0.0.5,10.1.0.0/16",
                id="agentplatform.E001",
            )
        ]
    return []
