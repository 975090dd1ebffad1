"""HTTP views. Thin (STYLE.md): an input serializer validates, one selector or service does the work, an
output serializer renders. Every error goes through apps.agents.api.exceptions. The run itself (execute) is
in apps/agents/api/runs.py; the async plumbing in deferred.py explains why execute is shaped as it is."""

from __future__ import annotations

import logging
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents.agent_cache import agent_get_runnable
from apps.agents.api import runs
from apps.agents.api.base import AgentPagination, ApiMixin, Pagination
from apps.agents.api.deferred import AsyncActionsMixin, DeferredResponse
from apps.agents.api.permissions import AgentWriteOwnerOrStaff
from apps.agents.api.schema import (
    AGENT_ID_PARAMETER,
    ERROR_ENVELOPE_EXAMPLE,
    EXECUTE_DESCRIPTION,
    EXECUTE_FAILURE_EXAMPLE,
    EXECUTE_REQUEST_EXAMPLES,
    EXECUTE_SUCCESS_EXAMPLE,
    IDEMPOTENCY_KEY,
    SSE_DESCRIPTION,
    error_response,
)
from apps.agents.api.schema_events import run_events_response
from apps.agents.api.serializers import (
    AgentExecutionInputSerializer,
    AgentExecutionOutputSerializer,
    AgentInputSerializer,
    AgentOutputSerializer,
    ExecutionAcceptedSerializer,
    TokenInputSerializer,
    TokenOutputSerializer,
)
from apps.agents.api.serializers_records import (
    AgentStatsOutputSerializer,
    CancelOutputSerializer,
    ConversationDetailOutputSerializer,
    ConversationInputSerializer,
    ConversationListOutputSerializer,
    ExecutionDetailOutputSerializer,
    ExecutionFilterSerializer,
    ExecutionListOutputSerializer,
    HealthOutputSerializer,
)
from apps.agents.api.sse import EVENT_STREAM
from apps.agents.api.throttling import AnonRateThrottle, RunRateThrottle
from apps.agents.errors import ApplicationError
from apps.agents.models import SLUG_VALIDATOR, Agent, AgentExecution, Conversation
from apps.agents.selectors import (
    ExecutionFilters,
    agent_get_visible,
    agents_visible_to,
    conversation_get_visible,
    conversations_visible_to,
    execution_get_visible,
    execution_list,
)
from apps.agents.services import agents as agent_services
from apps.agents.services import conversations as conversation_services
from apps.agents.services.auth import token_obtain
from apps.agents.services.health import health_check
from apps.agents.services.stats import agent_stats

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------- auth, health
class AuthTokenView(ApiMixin, APIView):
    public = True
    extra_error_codes = ["401"]
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]

    @extend_schema(
        tags=["auth"],
        request=TokenInputSerializer,
        responses={200: TokenOutputSerializer},
        summary="Trade a username and password for an API token",
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = TokenInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token = token_obtain(request=request._request, **data.validated_data)
        return Response(TokenOutputSerializer({"token": token}).data)


class HealthView(ApiMixin, APIView):
    public = True
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]

    @extend_schema(
        tags=["health"],
        responses={200: HealthOutputSerializer, 503: HealthOutputSerializer},
        summary="Database, broker (when configured) and configured platforms; 503 when something is down",
        auth=[],
    )
    def get(self, request: Request) -> Response:
        health = health_check()
        return Response(HealthOutputSerializer(health.as_dict()).data, status=200 if health.healthy else 503)


# -------------------------------------------------------------------------------- agents
@extend_schema(tags=["agents"])
@extend_schema_view(
    list=extend_schema(summary="Agents you can see: yours and shared ones"),
    create=extend_schema(
        request=AgentInputSerializer,
        responses={201: AgentOutputSerializer, 409: error_response("agent_id taken")},
    ),
    retrieve=extend_schema(parameters=[AGENT_ID_PARAMETER]),
    partial_update=extend_schema(
        parameters=[AGENT_ID_PARAMETER],
        request=AgentInputSerializer,
        responses={200: AgentOutputSerializer, 409: error_response("agent_id taken")},
    ),
    destroy=extend_schema(parameters=[AGENT_ID_PARAMETER], responses={204: None}),
)
class AgentViewSet(ApiMixin, AsyncActionsMixin, viewsets.GenericViewSet):
    """`{id}` is the slug (agent_id) or the UUID. Write access: owner or staff."""

    serializer_class = AgentOutputSerializer
    pagination_class = AgentPagination
    permission_classes = [IsAuthenticated, AgentWriteOwnerOrStaff]
    lookup_value_regex = "[^/]+"
    async_actions = frozenset({"execute"})
    event_stream_actions = frozenset({"execute"})

    def get_queryset(self) -> Any:
        return agents_visible_to(self.request.user)

    def get_object(self) -> Agent:
        # Running needs the row only (cached, apps/agents/agent_cache.py); the other actions show its owner.
        lookup = agent_get_runnable if self.action == "execute" else agent_get_visible
        agent = lookup(user=self.request.user, key=self.kwargs["pk"])
        if agent is None:
            raise NotFound()
        self.check_object_permissions(self.request, agent)
        return agent

    def get_throttles(self) -> list[Any]:
        if self.action == "execute":  # the user's rate and the rate of runs, counted in one round trip
            return [RunRateThrottle()]
        return super().get_throttles()

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AgentOutputSerializer(page, many=True).data)

    def create(self, request: Request) -> Response:
        data = AgentInputSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        agent = agent_services.agent_create(owner=request.user, data=data.validated_data)
        return Response(AgentOutputSerializer(agent).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(AgentOutputSerializer(self.get_object()).data)

    def partial_update(self, request: Request, pk: str) -> Response:
        agent = self.get_object()
        data = AgentInputSerializer(
            instance=agent, data=request.data, partial=True, context={"request": request}
        )
        data.is_valid(raise_exception=True)
        agent = agent_services.agent_update(agent=agent, data=data.validated_data, actor=request.user)
        return Response(AgentOutputSerializer(agent).data)

    def destroy(self, request: Request, pk: str) -> Response:
        agent_services.agent_delete(agent=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(parameters=[AGENT_ID_PARAMETER], responses={200: AgentStatsOutputSerializer})
    @action(detail=True, methods=["get"])
    def stats(self, request: Request, pk: str) -> Response:
        agent = self.get_object()
        body = {"agent": agent.agent_id, **agent_stats(agent).to_dict()}
        return Response(AgentStatsOutputSerializer(body).data)

    @extend_schema(
        summary="Run the agent (sync, SSE stream, or background)",
        description=EXECUTE_DESCRIPTION,
        parameters=[AGENT_ID_PARAMETER, IDEMPOTENCY_KEY],
        request=AgentExecutionInputSerializer,
        examples=[
            *EXECUTE_REQUEST_EXAMPLES,
            EXECUTE_SUCCESS_EXAMPLE,
            EXECUTE_FAILURE_EXAMPLE,
            ERROR_ENVELOPE_EXAMPLE,
        ],
        responses={
            (200, "application/json"): AgentExecutionOutputSerializer,
            (200, EVENT_STREAM): run_events_response("Server-sent events (see the table above)."),
            202: ExecutionAcceptedSerializer,
            409: error_response(
                "The agent is inactive (`agent_inactive`), or the conversation has a run in progress "
                "(`conversation_busy`)."
            ),
            422: error_response(
                "`idempotency_key_reused`: the Idempotency-Key was used with a different request."
            ),
            502: AgentExecutionOutputSerializer,
            503: error_response("Background runs are not available on this server."),
            504: AgentExecutionOutputSerializer,
        },
    )
    @action(detail=True, methods=["post"])
    def execute(self, request: Request, pk: str) -> DeferredResponse:
        agent = self.get_object()
        data = AgentExecutionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        command = runs.build_command(request=request, agent=agent, validated=data.validated_data)
        admitted = runs.admit(command)  # the row, written in this thread (runs.py)
        return DeferredResponse(
            lambda: runs.run(request, command, admitted), abandon=lambda: runs.abandon(admitted)
        )


# -------------------------------------------------------------------------------- executions
SLUG_PATTERN = SLUG_VALIDATOR.regex.pattern
MAX_EVENT_ID = 10**12
EVENT_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID}

EXECUTION_FILTERS = [
    OpenApiParameter(
        "agent",
        {"type": "string", "maxLength": 100, "pattern": SLUG_PATTERN},
        description="Agent slug or UUID.",
    ),
    OpenApiParameter("status", str, enum=["pending", "running", "completed", "failed", "cancelled"]),
    OpenApiParameter("conversation", OpenApiTypes.UUID, description="Conversation UUID."),
    OpenApiParameter("created_after", OpenApiTypes.DATETIME, description="ISO 8601 date-time (inclusive)."),
    OpenApiParameter("created_before", OpenApiTypes.DATETIME, description="ISO 8601 date-time (exclusive)."),
]


@extend_schema(tags=["executions"])
@extend_schema_view(
    list=extend_schema(
        parameters=EXECUTION_FILTERS, responses={200: ExecutionListOutputSerializer(many=True)}
    ),
    retrieve=extend_schema(responses={200: ExecutionDetailOutputSerializer}),
)
class ExecutionViewSet(ApiMixin, AsyncActionsMixin, viewsets.GenericViewSet):
    serializer_class = ExecutionDetailOutputSerializer
    pagination_class = Pagination
    lookup_value_regex = "[^/]+"
    async_actions = frozenset({"cancel", "events"})
    event_stream_actions = frozenset({"events"})

    def get_queryset(self) -> Any:
        return AgentExecution.objects.none()  # lookups go through the selectors; this only feeds the schema

    def get_object(self) -> AgentExecution:
        execution = execution_get_visible(user=self.request.user, execution_id=self.kwargs["pk"])
        if execution is None:
            raise NotFound()
        return execution

    def list(self, request: Request) -> Response:
        data = ExecutionFilterSerializer(data=request.query_params.dict())
        data.is_valid(raise_exception=True)
        filters = {k: v for k, v in data.validated_data.items() if k not in ("cursor", "page_size")}
        page = self.paginate_queryset(execution_list(user=request.user, filters=ExecutionFilters(**filters)))
        return self.get_paginated_response(ExecutionListOutputSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ExecutionDetailOutputSerializer(self.get_object()).data)

    @extend_schema(
        request=None, responses={202: CancelOutputSerializer, 409: error_response("Already finished.")}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> DeferredResponse:
        execution = self.get_object()
        if execution.is_terminal:
            raise ApplicationError(
                f"Execution is already {execution.status}.",
                code="not_cancellable",
                status=status.HTTP_409_CONFLICT,
            )
        return DeferredResponse(lambda: runs.cancel(execution))

    @extend_schema(
        summary="Server-sent events of an execution (resumable with Last-Event-ID)",
        description="Replays what the run published after `Last-Event-ID` (header) or `after` (query), then "
        "follows it live until its terminal event. A finished run answers its outcome at once. Leaving does "
        "not cancel the run (POST cancel does).\n\n" + SSE_DESCRIPTION,
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                EVENT_ID_SCHEMA,
                OpenApiParameter.HEADER,
                description="Last event id received.",
            ),
            OpenApiParameter(
                "after",
                EVENT_ID_SCHEMA,
                description="Same as Last-Event-ID, for clients that cannot set headers.",
            ),
        ],
        responses={(200, EVENT_STREAM): run_events_response("The run's events, ending with its outcome.")},
    )
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> DeferredResponse:
        execution = self.get_object()
        after = _last_event_id(request)
        return DeferredResponse(lambda: runs.follow(execution, after))


def _last_event_id(request: Request) -> int:
    """Last-Event-ID (header), else `after` (query), else 0. Each one sent must be the integer the schema
    says, even when the other wins: present but empty is not "from the start" (a browser's EventSource never
    sends an empty one)."""
    sent = [
        (name, value)
        for name, value in (
            ("Last-Event-ID", request.headers.get("Last-Event-ID")),
            ("after", request.query_params.get("after")),
        )
        if value is not None
    ]
    ids = [_event_id(name, value.strip()) for name, value in sent]
    return ids[0] if ids else 0


def _event_id(name: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise ApplicationError(f"{name} must be a non-negative integer.", fields={name: ["Not an integer."]})
    return int(raw)


# -------------------------------------------------------------------------------- conversations
@extend_schema(tags=["conversations"])
@extend_schema_view(
    list=extend_schema(responses={200: ConversationListOutputSerializer(many=True)}),
    create=extend_schema(
        request=ConversationInputSerializer, responses={201: ConversationDetailOutputSerializer}
    ),
    retrieve=extend_schema(responses={200: ConversationDetailOutputSerializer}),
    destroy=extend_schema(responses={204: None, 409: error_response("A run is in progress.")}),
)
class ConversationViewSet(ApiMixin, viewsets.GenericViewSet):
    serializer_class = ConversationDetailOutputSerializer
    pagination_class = Pagination
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> Any:
        return conversations_visible_to(self.request.user)

    def get_object(self, *, with_messages: bool = False) -> Conversation:
        conversation = conversation_get_visible(
            user=self.request.user, conversation_id=self.kwargs["pk"], with_messages=with_messages
        )
        if conversation is None:
            raise NotFound()
        return conversation

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ConversationListOutputSerializer(page, many=True).data)

    def create(self, request: Request) -> Response:
        data = ConversationInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = None
        if data.validated_data.get("agent"):
            agent = agent_get_visible(user=request.user, key=data.validated_data["agent"])
            if agent is None:
                raise ApplicationError(
                    "Agent not found.", code="not_found", status=404, fields={"agent": ["Not found."]}
                )
        conversation = conversation_services.conversation_create(
            owner=request.user, agent=agent, title=data.validated_data.get("title", "")
        )
        conversation = conversation_get_visible(
            user=request.user, conversation_id=conversation.pk, with_messages=True
        )
        return Response(ConversationDetailOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ConversationDetailOutputSerializer(self.get_object(with_messages=True)).data)

    def destroy(self, request: Request, pk: str) -> Response:
        conversation_services.conversation_delete(conversation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
