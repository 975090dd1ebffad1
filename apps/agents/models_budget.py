"""Spend control: budgets, their usage per period window, and the reservations held against them.

Money in the usage rows is counted in integer units of 1e-10 USD (the cost quantum of the pricing module):
the conditional UPDATE that admits a reservation (`spent + reserved + amount <= limit`) then compares
integers on every database. SQLite keeps a DecimalField as a float, where that sum could round the wrong way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from apps.agents.models import Agent, AgentExecution

#: USD -> integer units kept in BudgetUsage (1e-10 USD, apps/platforms/pricing.COST_QUANTUM).
UNITS_PER_USD = 10_000_000_000
#: The period start of "total" budgets, and of the concurrency counter of every budget.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def usd_to_units(amount: Decimal) -> int:
    return int((Decimal(amount) * UNITS_PER_USD).to_integral_value(rounding="ROUND_CEILING"))


def units_to_usd(units: int) -> Decimal:
    return (Decimal(units) / UNITS_PER_USD).quantize(Decimal("0.0000000001"))


def budget_label(name: str, scope: str, period: str, *, user: str = "", agent: str = "") -> str:
    """How refusals and the usage API name a budget: its name, else its scope's target and period."""
    if name:
        return name
    targets = {
        "user": f"user {user}",
        "agent": f"agent {agent}",
        "user_agent": f"user {user} on agent {agent}",
    }
    return f"{targets.get(scope, 'deployment')} ({period})"


class BudgetScope(models.TextChoices):
    USER = "user", "A user"
    AGENT = "agent", "An agent"
    USER_AGENT = "user_agent", "A user on one agent"
    DEPLOYMENT = "deployment", "The whole deployment"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day (UTC)"
    MONTH = "month", "Calendar month (UTC)"
    TOTAL = "total", "Total (never resets)"


class Budget(models.Model):
    """A limit on what runs in `scope` may spend per `period`: USD and/or tokens, and optionally how many
    runs may be in flight at once. Every budget that applies to a run must afford each of its attempts."""

    name = models.CharField(max_length=200, blank=True, help_text="Shown in refusals; default: the scope.")
    scope = models.CharField(max_length=20, choices=BudgetScope.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets")
    period = models.CharField(max_length=10, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    limit_usd = models.DecimalField(
        max_digits=20,
        decimal_places=10,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Empty: no USD limit.",
    )
    limit_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty: no token limit.")
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Runs in flight at once within this scope; empty: no limit."
    )
    is_active = models.BooleanField(default=True)
    #: Created from BUDGET_DEFAULT_USER for a user without a budget of their own.
    from_default = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # One budget per target and period. Partial constraints, one per scope: NULLs never collide in a
            # plain unique constraint.
            models.UniqueConstraint(
                fields=["user", "agent", "period"],
                condition=Q(scope="user_agent"),
                name="budget_unique_user_agent_period",
            ),
            models.UniqueConstraint(
                fields=["period"], condition=Q(scope="deployment"), name="budget_unique_deployment_period"
            ),
            models.UniqueConstraint(
                fields=["user", "period"], condition=Q(scope="user"), name="budget_unique_user_period"
            ),
            models.UniqueConstraint(
                fields=["agent", "period"], condition=Q(scope="agent"), name="budget_unique_agent_period"
            ),
            models.CheckConstraint(
                condition=(
                    Q(scope="user", user__isnull=False, agent__isnull=True)
                    | Q(scope="agent", user__isnull=True, agent__isnull=False)
                    | Q(scope="user_agent", user__isnull=False, agent__isnull=False)
                    | Q(scope="deployment", user__isnull=True, agent__isnull=True)
                ),
                name="budget_scope_matches_targets",
            ),
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        user = self.user.get_username() if self.user_id is not None else ""
        agent = self.agent.agent_id if self.agent_id is not None else ""
        return budget_label(self.name, self.scope, self.period, user=user, agent=agent)

    def clean(self) -> None:
        needs_user = self.scope in (BudgetScope.USER, BudgetScope.USER_AGENT)
        needs_agent = self.scope in (BudgetScope.AGENT, BudgetScope.USER_AGENT)
        errors = {}
        if needs_user != (self.user_id is not None):
            errors["user"] = "required for this scope" if needs_user else "must be empty for this scope"
        if needs_agent != (self.agent_id is not None):
            errors["agent"] = "required for this scope" if needs_agent else "must be empty for this scope"
        if errors:
            raise ValidationError(errors)


class BudgetUsage(models.Model):
    """What one budget spent and holds in one period window (`period_start`). The concurrency counter of
    every budget lives on its row at EPOCH: runs in flight do not belong to a period."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="usage")
    period_start = models.DateTimeField()
    spent_units = models.BigIntegerField(default=0)
    reserved_units = models.BigIntegerField(default=0)
    spent_tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    active_runs = models.IntegerField(default=0)
    #: Of `spent_*`, what was settled at a reservation's worst case because its attempt's process died
    #: before it reported usage (the reaper): an upper bound of what the provider may have billed.
    estimated_units = models.BigIntegerField(default=0)
    estimated_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start"], name="budget_usage_unique_window")
        ]

    def __str__(self) -> str:
        return f"{self.budget_id} @ {self.period_start:%Y-%m-%d}"

    @property
    def spent_usd(self) -> Decimal:
        return units_to_usd(self.spent_units)

    @property
    def reserved_usd(self) -> Decimal:
        return units_to_usd(self.reserved_units)

    @property
    def estimated_usd(self) -> Decimal:
        return units_to_usd(self.estimated_units)


class ReservationKind(models.TextChoices):
    SPEND = "spend", "One provider attempt's worst case"
    SLOT = "slot", "One run in flight (concurrency)"


class BudgetReservation(models.Model):
    """An amount held against budget windows by one attempt (or one run, for a concurrency slot) until it
    is settled. The row is the proof of the hold: settling or releasing deletes it first, and adjusts the
    counters only if it did, so a reservation is never released twice (the reaper and a late settlement)."""

    execution = models.ForeignKey(
        AgentExecution, null=True, blank=True, on_delete=models.CASCADE, related_name="reservations"
    )
    kind = models.CharField(max_length=10, choices=ReservationKind.choices, default=ReservationKind.SPEND)
    amount_units = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    #: [[budget_id, period_start ISO 8601], ...]: the usage rows holding this amount.
    windows = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="budget_reservation_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_units} for {self.execution_id}"
