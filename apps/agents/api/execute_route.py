"""The plain synchronous run over HTTP, answered without Django's request handler and DRF's dispatch.

Why: `POST /api/v1/agents/{id}/execute/` is the request a deployment serves most. With the work itself lean
(one thread hop and one pooled connection to admit the run, one to record it), a third of the server's CPU
per run request went to the frameworks around that work: Django's ASGI handler and middleware chain and DRF's
dispatch (its request wrapper, content negotiation, response finalizing), about 1.1 ms each of 7.3 ms
(`bench/api.py --variants pool`, 2026-12-04, three alternating rounds of prototypes). README: Performance.

What is answered here: a POST to the execute route with `Authorization: Token <key>` (the schemes of the
view's leading token authenticators), a JSON body (`Content-Type: application/json`), a JSON answer (no
Accept, `*/*` or `application/json`; no query string, so no `?format=`), for a synchronous run (neither
`stream` nor `background`). It calls the pieces the DRF view (views.AgentViewSet.execute) calls, as
functions and in an order that answers alike: the token authentication, the agent lookup, the body's parser
and serializer, the run rate limit (RunRateThrottle), the admission and the run (api/runs.py), the one
exception handler and JSON renderer, and Django's own security, common and frame-options middleware for the
answer's headers. tests/agents/api/test_execute_route.py holds the answers of both paths equal.

Where the admission runs: on the event loop when nothing in it needs a thread (admit_on_loop: the token, the
agent and the budgets in this process's memory, no Idempotency-Key, conversation, budget or output schema,
PostgreSQL with the pool; services/loop_admission.py), else in the request's thread as one unit of database
work (admit). Both take the same steps in the same order and answer alike (tests/agents/api/
test_loop_admission.py).

Everything else goes to Django untouched, *before anything is counted or written*: another route or method,
a session cookie instead of a token, an unknown token, an agent the user cannot see, an empty body, a stream
or background run (a body that names either key is handed over before any work), a Host not in ALLOWED_HOSTS, a plain-HTTP request that SECURE_SSL_REDIRECT redirects, a
body over MAX_REQUEST_BYTES. Django answers those as it always did (401, 404, 400...). Once a request has
counted against the user's rate limits it is answered here: a 429, a body that does not parse or validate
(400 with the field named: parsed once, not again by Django), the admission's 409/422/503, the run's
200/502/504.

The route is on only with the shipped MIDDLEWARE (a team that adds one, CORS headers say, gets Django's path
for every request) and with no database keeping connections between requests (Django's connection checks at
a request's start are skipped then, config/asgi.py); EXECUTE_ROUTE=false turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections, connections
from django.http import HttpResponse
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.log import log_response
from rest_framework.exceptions import AuthenticationFailed, ParseError, Throttled, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.agents.agent_cache import agent_get_runnable, agent_in_memory
from apps.agents.api import runs
from apps.agents.api.authentication import CachedTokenAuthentication
from apps.agents.api.exceptions import api_exception_handler
from apps.agents.api.parsers import BoundedJSONParser
from apps.agents.api.renderers import SafeJSONRenderer
from apps.agents.api.serializers import AgentExecutionInputSerializer
from apps.agents.api.throttling import RunRateThrottle, counts_on_loop
from apps.agents.api.views import AgentViewSet
from apps.agents.services import loop_admission
from apps.agents.services.db import (
    admission_slot,
    connections_end_with_requests,
    db_unit,
    kept_if_cancelled,
    pooled,
)
from config import middleware

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

JSON = "application/json"
ACCEPTED = frozenset({"", "*/*", JSON})
RENDERER = SafeJSONRenderer()
# A body that names one of these keys is handed to Django before any work here (one that names them only in a
# text, or spells them with escapes, is found out after validation instead, still before anything is counted).
OTHER_MODES = (b'"stream"', b'"background"')
PARSER = BoundedJSONParser()


def _no_view(request: Any) -> None:  # the header middlewares below are only asked for their process_* hooks
    return None


# What those middlewares do to an execute answer: request_finished aside, the rest of the chain adds nothing
# to a token-authenticated JSON answer (no session, message or CSRF cookie is touched, no static file).
SECURITY = middleware.SecurityMiddleware(_no_view)
COMMON = middleware.CommonMiddleware(_no_view)
FRAME_OPTIONS = middleware.XFrameOptionsMiddleware(_no_view)


class Unplain(Exception):
    """The request is not one this route answers: Django gets it (nothing was counted or written)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    command: runs.ExecuteCommand
    run: runs.AdmittedRun


# -------------------------------------------------------------------------------- the DRF view's steps
def _token_schemes() -> frozenset[str]:
    """Schemes of the execute view's leading token authenticators: DRF tries them before any other (a
    session), so a request with one of these headers is authenticated by them or refused (401)."""
    schemes = set()
    for authenticator in AgentViewSet().get_authenticators():
        if not isinstance(authenticator, CachedTokenAuthentication):
            break
        schemes.add(authenticator.keyword.lower())
    return frozenset(schemes)


def _credentials(request: ASGIRequest, schemes: frozenset[str]) -> str:
    """The token key of the Authorization header; Unplain for any other header (Django answers it)."""
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() not in schemes or not parts[1].isascii():
        raise Unplain
    return parts[1]


def _user(request: ASGIRequest, schemes: frozenset[str]) -> Any:
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(_credentials(request, schemes))
    except AuthenticationFailed:
        raise Unplain from None
    return user


def _body(request: ASGIRequest) -> tuple[dict[str, Any], Exception | None]:
    """The body's validated data, or the refusal it gets once the rate is counted (a 400); Unplain for a stream
    or background run."""
    try:
        body = AgentExecutionInputSerializer(data=PARSER.parse(io.BytesIO(request.body)))
        if not body.is_valid():
            return {}, ValidationError(body.errors)
    except ParseError as exc:
        return {}, exc
    if body.validated_data["stream"] or body.validated_data["background"]:
        raise Unplain
    return body.validated_data, None


def _drf_request(request: ASGIRequest, user: Any) -> Request:
    drf_request = Request(request)
    drf_request.user = user
    return drf_request


def admit(request: ASGIRequest, key: str, schemes: frozenset[str]) -> Admitted | Response:
    """The DRF half of execute for a plain request (sync, in the request's thread): the run admitted, or the
    answer refusing it. Raises Unplain, before counting or writing anything, for what Django should answer.

    The order answers as DRF's does: the rate is counted before the body is read (a refused request is a 429
    whatever its body), and a body that does not parse or validate is a 400 after it. The body is read first
    only to know whether it asks for a stream or a background run (Django's to answer, uncounted)."""
    user = _user(request, schemes)
    agent = agent_get_runnable(user=user, key=key)
    if agent is None or not request.body:
        raise Unplain
    validated, refusal = _body(request)
    drf_request = _drf_request(request, user)
    throttle = RunRateThrottle()
    try:
        if not throttle.allow_request(drf_request, None):  # type: ignore[arg-type]
            raise Throttled(throttle.wait())
        if refusal is not None:
            raise refusal
        command = runs.build_command(request=drf_request, agent=agent, validated=validated)
        return Admitted(command, runs.admit(command))
    except Exception as exc:  # a refusal (429, 400, 409, 422, 503...): the one handler's envelope
        return api_exception_handler(exc, {})


#: The largest body admitted on the event loop: parsing and validating it there is CPU no other request can
#: use meanwhile, so a larger one (up to DATA_UPLOAD_MAX_MEMORY_SIZE) is parsed in the admission's thread.
LOOP_BODY_BYTES = 64 * 1024


async def admit_on_loop(
    request: ASGIRequest, key: str, schemes: frozenset[str]
) -> Admitted | Response | None:
    """admit's steps in admit's order, on the event loop without a thread (services/loop_admission.py): the
    token and the agent from this process's memory, the rate counted through Redis' asyncio client, the
    INSERT sent from the loop. None, before anything is counted or written, when a step needs I/O or the
    thread (not in memory, an Idempotency-Key, a conversation, a budget...): then admit answers."""
    if not loop_admission.available() or len(request.body) > LOOP_BODY_BYTES or not counts_on_loop():
        return None
    if request.headers.get(runs.IDEMPOTENCY_HEADER, "").strip():
        return None  # a replay reads the earlier row first
    credentials = _credentials(request, schemes)
    try:
        found = CachedTokenAuthentication().peek_credentials(credentials)
    except AuthenticationFailed:
        raise Unplain from None
    if found is None:
        return None
    user = found[0]
    known, agent = agent_in_memory(user=user, key=key)
    if not known:
        return None
    if agent is None or not request.body:
        raise Unplain
    if not loop_admission.ready(agent, user):
        return None  # before the body is parsed: the thread parses it
    validated, refusal = _body(request)
    drf_request = _drf_request(request, user)
    command = planned = None
    if refusal is None:
        try:
            command = runs.build_command(request=drf_request, agent=agent, validated=validated)
            planned = loop_admission.plan(agent, command.input_data, user, command.context)
            if planned is None:
                return None
        except Exception as exc:  # refused once the rate is counted, as in admit
            refusal = exc
    throttle = RunRateThrottle()
    try:
        if not await throttle.aallow_request(drf_request):
            raise Throttled(throttle.wait())
        if refusal is not None:
            raise refusal
        run = loop_admission.admit(planned, mode=command.mode, request_hash=command.request_hash)  # type: ignore[arg-type, union-attr]
        return Admitted(command, await kept_if_cancelled(run, runs.abandon))
    except Exception as exc:
        return api_exception_handler(exc, {})


async def abandon(outcome: Admitted | Response) -> None:
    if isinstance(outcome, Admitted):
        await runs.abandon(outcome.run)


_admit_unit = db_unit(admit)


# -------------------------------------------------------------------------------- the answer
def http_answer(request: ASGIRequest, response: Response) -> HttpResponse:
    """`response` as the DRF view and Django's middleware would send it: rendered by the same renderer, DRF's
    Allow and Vary headers, then the middlewares' own process_response (innermost first, as Django)."""
    answer = HttpResponse(RENDERER.render(response.data), status=response.status_code, content_type=JSON)
    for name, value in response.items():
        if name.lower() != "content-type":
            answer[name] = value
    answer["Allow"] = "POST, OPTIONS"
    patch_vary_headers(answer, ("Accept",))
    for hooks in (FRAME_OPTIONS, COMMON, SECURITY):
        answer = hooks.process_response(request, answer)
    return answer


async def log_refusal(request: ASGIRequest, answer: HttpResponse) -> None:
    """django.request's line for a 4xx or 5xx, as Django's handler writes it: in a thread, since a deployment's
    handlers for it may block (Django's own mail_admins sends 5xx by SMTP when ADMINS is set)."""
    if answer.status_code >= 400:
        await sync_to_async(log_response, thread_sensitive=False)(
            "%s: %s", answer.reason_phrase, request.path, response=answer, request=request
        )


async def send_answer(answer: HttpResponse, send: Send) -> None:
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in answer.items()]
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": answer.content})


# -------------------------------------------------------------------------------- the request's channel
class Incoming:
    """The request's receive channel: its body read here (at most `limit` bytes kept), then one reader that
    notices the client going away. `replay` is the same channel for Django when Django answers."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.chunks: list[bytes] = []
        self.ended = False  # the body's last message came
        self.complete = False  # ... and the body is at most the limit
        self.gone = asyncio.Event()
        self._on_gone: Callable[[], Any] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._replayed = 0

    async def read_body(self, limit: int) -> bool:
        """False when the client left first. `complete`: the whole body came, at most `limit` bytes; reading
        stops once more came (the rest, if any, is left for Django, which refuses the body)."""
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            if chunk:
                self.chunks.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                self.ended = True
                self.complete = size <= limit
                return True
            if size > limit:
                return True  # not complete: the rest stays unread, for Django

    def listen(self, on_gone: Callable[[], Any] | None) -> None:
        """Start the one reader (once); `on_gone` is called if the client goes away from now on."""
        self._on_gone = on_gone
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if self._on_gone is not None:
            self._on_gone()

    def stop(self) -> None:
        self._on_gone = None
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()

    async def replay(self) -> Message:
        if self._replayed < len(self.chunks):
            self._replayed += 1
            more = self._replayed < len(self.chunks) or not self.ended
            return {"type": "http.request", "body": self.chunks[self._replayed - 1], "more_body": more}
        if self._replayed == 0 and self.ended:  # an empty body
            self._replayed = 1
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.ended:
            return await self._receive()  # the rest of a body too large to keep here
        if self._listener is None:
            return await self._receive()
        await self.gone.wait()
        return {"type": "http.disconnect"}


# -------------------------------------------------------------------------------- the route
class ExecuteRoute:
    """ASGI: plain execute requests answered here, every other request by `app` (Django)."""

    def __init__(
        self, app: ASGIApp, request_context: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
    ):
        self.app = app
        self.request_context = request_context
        self._path: re.Pattern[str] | None = None
        self._schemes: frozenset[str] = frozenset()
        self.enabled = self._enabled()

    @staticmethod
    def _enabled() -> bool:
        if not settings.EXECUTE_ROUTE:
            return False
        if tuple(settings.MIDDLEWARE) != tuple(settings.SHIPPED_MIDDLEWARE):
            logger.warning("EXECUTE_ROUTE is off: MIDDLEWARE differs from the shipped list; Django answers")
            return False
        return connections_end_with_requests()

    def _match(self, scope: dict[str, Any]) -> str | None:
        if not self.enabled or scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        if self._path is None:  # the URLconf is only loaded once a request comes
            marker = "key0marker"
            route = re.escape(reverse("agent-execute", args=[marker])).replace(marker, "([^/]+)")
            self._path = re.compile(route)
            self._schemes = _token_schemes()
        match = self._path.fullmatch(scope["path"])
        if match is None or scope.get("query_string"):
            return None
        return match.group(1)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        key = self._match(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        incoming = Incoming(receive)
        if not await incoming.read_body(settings.DATA_UPLOAD_MAX_MEMORY_SIZE):
            return  # the client left before its body came, as Django does
        request = self._plain_request(scope, incoming)
        if request is None:
            await self.app(scope, incoming.replay, send)
            return
        async with self.request_context():
            work = asyncio.ensure_future(self._answer(request, key, send))
            incoming.listen(work.cancel)  # the client going away cancels the run, as Django cancels a view
            try:
                answered = await work
                if not answered:  # Django reads the same channel, the listener included, for its disconnect
                    incoming.listen(None)
                    await self.app(scope, incoming.replay, send)
            except asyncio.CancelledError:
                if not incoming.gone.is_set():
                    raise  # the server's own cancellation, not the client's
                answered = True
            finally:
                incoming.stop()
            if answered and not all(pooled(alias) for alias in connections):
                # Django's request end for this thread (request_finished): with the pool every unit already
                # gave its connection back (services/db.py); without it the thread's connection is closed.
                await sync_to_async(close_old_connections)()

    def _plain_request(self, scope: dict[str, Any], incoming: Incoming) -> ASGIRequest | None:
        """Django's request object for a request this route may answer, or None (Django answers)."""
        if not incoming.complete:
            return None  # too large: Django's 400
        body = b"".join(incoming.chunks)
        if any(key in body for key in OTHER_MODES):
            return None  # most likely a stream or background run: Django's, without authenticating it twice
        request = ASGIRequest(scope, io.BytesIO(body))
        if request.content_type != JSON or request.headers.get("Accept", "").strip().lower() not in ACCEPTED:
            return None
        try:
            request.get_host()  # ALLOWED_HOSTS
        except DisallowedHost:
            return None
        if SECURITY.process_request(request) is not None:  # SECURE_SSL_REDIRECT: Django redirects
            return None
        return request

    async def _answer(self, request: ASGIRequest, key: str, send: Send) -> bool:
        """Answer the request; False when it is Django's to answer after all (nothing was sent)."""
        try:
            # One slot for either way: on the loop it bounds the Redis and PostgreSQL round trips of a burst.
            async with admission_slot():
                outcome = await admit_on_loop(request, key, self._schemes)
                if outcome is None:
                    outcome = await kept_if_cancelled(_admit_unit(request, key, self._schemes), abandon)
        except Unplain:
            return False
        except Exception as exc:  # no admission slot, no pool connection: 503
            outcome = api_exception_handler(exc, {})
        if isinstance(outcome, Admitted):
            try:
                outcome = await runs.run_sync(outcome.run)
            except Exception as exc:
                outcome = api_exception_handler(exc, {})
        answer = http_answer(request, outcome)
        await log_refusal(request, answer)  # before the answer, as Django's handler
        await send_answer(answer, send)
        return True
