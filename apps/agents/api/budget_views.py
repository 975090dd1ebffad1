"""Spend control over HTTP: `GET /api/v1/usage/` (the caller's budgets and usage) and, for staff,
`GET/POST /api/v1/budgets/` (list every budget; create or change one). Thin: a serializer validates, the
selector reads, the service writes."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents.api.fields import StrictCharField, StrictChoiceField, StrictIntegerField
from apps.agents.api.serializers import StrictSerializer
from apps.agents.api.views import ApiMixin
from apps.agents.budget_selectors import all_budgets, budget_statuses, usage_for_user
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent
from apps.agents.models_budget import BudgetPeriod
from apps.agents.services.budgets import UNSET, set_budget


class BudgetStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="null: the default budget, not created yet.")
    name = serializers.CharField()
    scope = serializers.CharField()
    user = serializers.CharField(allow_null=True)
    agent = serializers.CharField(allow_null=True)
    period = serializers.CharField()
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(allow_null=True, help_text="null: a total budget never resets.")
    limit_usd = serializers.DecimalField(
        max_digits=20, decimal_places=10, allow_null=True, coerce_to_string=True
    )
    limit_tokens = serializers.IntegerField(allow_null=True)
    max_concurrent = serializers.IntegerField(allow_null=True)
    spent_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=True)
    reserved_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=True)
    estimated_usd = serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        coerce_to_string=True,
        help_text="Of spent_usd, what attempts lost with their worker were settled at (their worst case).",
    )
    remaining_usd = serializers.DecimalField(
        max_digits=20, decimal_places=10, allow_null=True, coerce_to_string=True
    )
    spent_tokens = serializers.IntegerField()
    reserved_tokens = serializers.IntegerField()
    estimated_tokens = serializers.IntegerField(
        help_text="Of spent_tokens, the estimated part (estimated_usd)."
    )
    remaining_tokens = serializers.IntegerField(allow_null=True)
    active_runs = serializers.IntegerField()
    is_active = serializers.BooleanField()
    from_default = serializers.BooleanField()


class UsageOutputSerializer(serializers.Serializer):
    budgets = BudgetStatusSerializer(many=True)


class BudgetSetInputSerializer(StrictSerializer):
    user = StrictCharField(required=False, allow_null=True, max_length=150, help_text="Username.")
    agent = StrictCharField(required=False, allow_null=True, max_length=100, help_text="Agent slug.")
    period = StrictChoiceField(choices=BudgetPeriod.choices)
    limit_usd = serializers.DecimalField(
        max_digits=20, decimal_places=10, min_value=0, required=False, allow_null=True
    )
    limit_tokens = StrictIntegerField(min_value=0, required=False, allow_null=True)
    max_concurrent = StrictIntegerField(min_value=0, required=False, allow_null=True)
    name = StrictCharField(max_length=200, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


def _targets(data: dict[str, Any]) -> tuple[Any, Any]:
    user = agent = None
    if data.get("user"):
        user = get_user_model().objects.filter(username=data["user"]).first()
        if user is None:
            raise ApplicationError("No such user.", code="invalid", fields={"user": ["No such user."]})
    if data.get("agent"):
        agent = Agent.objects.filter(agent_id=data["agent"]).first()
        if agent is None:
            raise ApplicationError("No such agent.", code="invalid", fields={"agent": ["No such agent."]})
    return user, agent


class UsageView(ApiMixin, APIView):
    """The caller's budgets: limits, spend and reservations in the current period of each."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UsageOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(UsageOutputSerializer({"budgets": usage_for_user(user=request.user)}).data)


class BudgetListView(ApiMixin, APIView):
    """Staff only: every budget with its current usage (GET); create or change one (POST, by user/agent/period)."""

    permission_classes = [IsAuthenticated, IsAdminUser]

    @extend_schema(responses={200: UsageOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(UsageOutputSerializer({"budgets": all_budgets()}).data)

    @extend_schema(
        request=BudgetSetInputSerializer, responses={200: BudgetStatusSerializer, 201: BudgetStatusSerializer}
    )
    def post(self, request: Request) -> Response:
        data = BudgetSetInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user, agent = _targets(values)
        budget, created = set_budget(
            user=user,
            agent=agent,
            period=values["period"],
            **{
                key: values.get(key, UNSET)
                for key in ("limit_usd", "limit_tokens", "max_concurrent", "name", "is_active")
            },
        )
        body = BudgetStatusSerializer(budget_statuses([budget])[0]).data
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
