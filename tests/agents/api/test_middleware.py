"""The static-files middleware is async-capable: under ASGI it never forces the request through a thread
(which broke SSE runs writing their outcome after the view returned), and it still serves static files."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from apps.agents.api.middleware import AsyncWhiteNoiseMiddleware


async def _next_layer(request):  # type: ignore[no-untyped-def]
    return HttpResponse("from the next layer")


@override_settings(WHITENOISE_USE_FINDERS=True, WHITENOISE_AUTOREFRESH=False)
async def test_under_asgi_it_is_async_and_serves_static_files_in_a_thread():
    middleware = AsyncWhiteNoiseMiddleware(_next_layer)
    assert iscoroutinefunction(middleware)

    static = await middleware(RequestFactory().get("/static/admin/css/base.css"))
    other = await middleware(RequestFactory().get("/api/v1/health/"))

    assert static.status_code == 200 and static["Content-Type"].startswith("text/css")
    assert other.content == b"from the next layer"


def test_under_wsgi_it_is_plain_whitenoise():
    middleware = AsyncWhiteNoiseMiddleware(lambda request: HttpResponse("sync"))
    assert not iscoroutinefunction(middleware)
    assert middleware(RequestFactory().get("/anything/")).content == b"sync"
