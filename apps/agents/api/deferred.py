"""Async endpoints (execute, SSE) with exactly the same DRF pipeline as every other endpoint.

Why this shape: DRF 3.18 views are synchronous and `adrf` is not a dependency. A run must be awaited on the
event loop: an SSE stream may last minutes, and it must notice the client going away (Django's ASGI handler
cancels the request task on disconnect, which is what cancels the engine's stream). Blocking a thread per run
with `async_to_sync` would lose both. Re-implementing DRF's dispatch as async would copy DRF internals.

So an action marked async (`AsyncActionsMixin.async_actions`) runs in two halves:
1. the DRF view, unchanged and synchronous, in a worker thread (exactly what Django does for any sync view
   under ASGI): authentication, permissions, throttling, content negotiation, parsing, validation, object
   lookup and the exception handler. It ends by returning a `DeferredResponse` holding the async rest;
2. the route's view function is an async wrapper that awaits that rest on the event loop. An exception from it
   goes through the same view's `handle_exception` (same handler, same envelope), and a DRF `Response` it
   returns is finalized (rendered) by the same view.
The router, drf-spectacular and the CSRF middleware see the same view attributes as for a sync action.

A plain synchronous execute request (a token, a JSON body and answer) usually never gets here: it is
answered before Django, through the same steps (execute_route.py, for the CPU Django's handler and DRF's
dispatch take). Everything else an async action serves (streams, background runs, session logins, every
refusal before the rate limit counts) comes this way.

The DRF half may have written something the async rest was to take over (execute writes its run's row
there). When the client goes away while the DRF half runs, Django cancels the request; the DRF half is left
to finish and what it wrote is given up (`DeferredResponse.abandon`: the row recorded cancelled), see
services/db.py kept_if_cancelled.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import cc_delim_re, patch_vary_headers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from apps.agents.services.db import admission_slot, db_unit, kept_if_cancelled

Produce = Callable[[], Awaitable[HttpResponseBase]]


class DeferredResponse(Response):
    """What a DRF action returns when the rest of its work must be awaited (see module docstring).
    `abandon`: what gives up the DRF half's work when the client left before `produce` could run."""

    def __init__(self, produce: Produce, abandon: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self.produce = produce
        self.abandon = abandon


def _abandon(response: HttpResponseBase) -> Awaitable[None] | None:
    """What gives up a DRF half's work whose client left (kept_if_cancelled), if it deferred any."""
    if isinstance(response, DeferredResponse) and response.abandon is not None:
        return response.abandon()
    return None


async def complete_deferred(response: HttpResponseBase) -> HttpResponseBase:
    if isinstance(response, DeferredResponse):
        view = response.renderer_context["view"]
        try:
            final = await response.produce()
        except Exception as exc:
            final = view.handle_exception(exc)
        if isinstance(final, Response):
            final = view.finalize_response(view.request, final, *view.args, **view.kwargs)
        # DRF's finalize_response adds the view's Vary (Accept: the answer depends on it) only once, to the
        # first response it finalizes: this one's half.
        if response.has_header("Vary"):
            patch_vary_headers(final, cc_delim_re.split(response["Vary"]))
        response = final
    return rendered_json(response)


def rendered_json(response: HttpResponseBase) -> HttpResponseBase:
    """A DRF Response rendered as JSON here, on the event loop, as a plain HttpResponse.

    Django renders a response that has a `render` method (a DRF Response) through `sync_to_async`: a thread
    hop of its own, the sixth of a run request, for a JSON body that takes microseconds to write (the SSE
    events of a streamed run are written on the loop likewise). Any other renderer (the browsable API, which
    may query the database) is left to Django's hop."""
    if not isinstance(response, Response) or not isinstance(
        getattr(response, "accepted_renderer", None), JSONRenderer
    ):
        return response
    response.render()
    plain = HttpResponse(response.content, status=response.status_code, headers=response.headers)
    plain.cookies = response.cookies
    return plain


class AsyncActionsMixin:
    """For a ViewSet: routes whose actions are listed in `async_actions` get an async view function."""

    async_actions: frozenset[str] = frozenset()

    @classmethod
    def as_view(cls, actions: dict[str, str] | None = None, **initkwargs: Any) -> Callable[..., Any]:
        view = super().as_view(actions, **initkwargs)  # type: ignore[misc]
        if not actions or not set(actions.values()) & cls.async_actions:
            return view
        # A unit of database work like any other (services/db.py): it waits for a slot, and gives its
        # connection back when the DRF half ends instead of holding it while a stream lasts.
        run_drf_view = db_unit(view)

        async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            # Admitted a few at a time (services/db.py, admission_slot), so that a burst of runs leaves the
            # loop and the GIL to short requests; the slot is given back once the DRF half is done.
            async with admission_slot():
                drf_response = await kept_if_cancelled(run_drf_view(request, *args, **kwargs), _abandon)
            return await complete_deferred(drf_response)

        # cls, initkwargs, actions, csrf_exempt: what the router, spectacular and CSRF middleware look for.
        functools.update_wrapper(async_view, view)
        return async_view
