"""Django's own middleware, without a thread hop per hook under ASGI.

Under ASGI, `MiddlewareMixin` runs every `process_request` and `process_response` through
`sync_to_async(thread_sensitive=True)`: with the seven middlewares an app with an admin needs, that is
thirteen round trips to a worker thread per request, before the view does any work. Measured with
bench/api.py's probe on this 2-core machine, a token-authenticated GET spent most of its 16-19 ms of server
CPU on those hops and their context switches.

The hooks of these seven do not touch the database: they read and set headers and cookies, resolve URLs, and
put lazy objects on the request (the session and the user are loaded only when something reads them, which
the view does in its own thread). So they run here on the event loop, inline. The two exceptions are writes
at the end of a request: the session is saved when it was modified, and messages are stored when some were
used or added. Those `process_response` calls still go to a thread, and only then.

Each class subclasses Django's, so settings, system checks (the admin's E408-E410) and behaviour under WSGI
are Django's own.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security


class InlineHooksMixin:
    """`__acall__` that calls the hooks directly; `response_writes` says when process_response needs a thread."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        if hasattr(self, "process_response"):
            if self.response_writes(request):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = self.process_response(request, response)
        return response

    def response_writes(self, request: HttpRequest) -> bool:
        return False


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineHooksMixin, sessions.SessionMiddleware):
    def response_writes(self, request: HttpRequest) -> bool:
        session: Any = getattr(request, "session", None)
        if session is None:
            return False
        return bool(session.accessed or session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """process_view too: an async one is awaited by the handler instead of being sent to a thread (under WSGI
    Django's own is used)."""

    def __init__(self, get_response: Any) -> None:
        if settings.CSRF_USE_SESSIONS:  # its hooks would then read the session, from the database
            raise ImproperlyConfigured(
                "CSRF_USE_SESSIONS needs django.middleware.csrf.CsrfViewMiddleware in MIDDLEWARE"
            )
        super().__init__(get_response)
        if not self.async_mode:
            self.process_view = super().process_view  # type: ignore[method-assign]

    async def process_view(self, request: HttpRequest, callback: Any, args: Any, kwargs: Any) -> Any:
        return super().process_view(request, callback, args, kwargs)


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineHooksMixin, messages.MessageMiddleware):
    def response_writes(self, request: HttpRequest) -> bool:
        storage: Any = getattr(request, "_messages", None)
        return storage is not None and bool(storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass
