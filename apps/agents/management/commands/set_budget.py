"""`manage.py set_budget`: create or change a budget from the command line (README "Budgets and limits").

    manage.py set_budget --user alice --usd 5 --period day
    manage.py set_budget --agent summarizer --tokens 2000000 --period month
    manage.py set_budget --user alice --agent summarizer --usd 1 --period total
    manage.py set_budget --deployment --usd 500 --period month
    manage.py set_budget --user alice --period day --usd none      # remove the USD limit

Options not given keep the budget's current value. `--list` prints every budget with its usage.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents.budget_selectors import all_budgets
from apps.agents.errors import ApplicationError
from apps.agents.models import Agent
from apps.agents.models_budget import BudgetPeriod
from apps.agents.services.budgets import UNSET, set_budget

NONE_WORDS = {"none", "null", "unlimited", ""}


def _usd(raw: str) -> Decimal | None:
    if raw.strip().lower() in NONE_WORDS:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise CommandError(f"--usd: {raw!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0:
        raise CommandError("--usd must be a non-negative amount")
    return value


def _count(name: str) -> Any:
    def parse(raw: str) -> int | None:
        if raw.strip().lower() in NONE_WORDS:
            return None
        if not raw.isdigit():
            raise CommandError(f"--{name}: {raw!r} is not a non-negative integer")
        return int(raw)

    return parse


class Command(BaseCommand):
    help = "Create or change a spend budget for a user, an agent, a user on an agent, or the deployment."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="Username.")
        parser.add_argument("--agent", help="Agent slug (agent_id).")
        parser.add_argument("--deployment", action="store_true", help="The whole deployment's budget.")
        parser.add_argument("--period", choices=BudgetPeriod.values, default=None)
        parser.add_argument("--usd", help="Limit in USD ('none' removes it).")
        parser.add_argument("--tokens", help="Limit in tokens ('none' removes it).")
        parser.add_argument(
            "--max-concurrent", dest="max_concurrent", help="Runs at once ('none' removes it)."
        )
        parser.add_argument("--name", help="Shown in refusals.")
        parser.add_argument("--disable", action="store_true", help="Deactivate the budget.")
        parser.add_argument("--enable", action="store_true", help="Activate the budget.")
        parser.add_argument("--list", action="store_true", help="Print every budget with its usage.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            for status in all_budgets():
                self.stdout.write(
                    f"{status.id}\t{status.name}\tusd {status.spent_usd}/{status.limit_usd or '-'} "
                    f"(+{status.reserved_usd} held)\ttokens {status.spent_tokens}/{status.limit_tokens or '-'}"
                    f"\tconcurrent {status.active_runs}/{status.max_concurrent or '-'}"
                    f"\t{'' if status.is_active else 'inactive'}"
                )
            return
        if not (options["user"] or options["agent"] or options["deployment"]):
            raise CommandError(
                "name what the budget is for: --user NAME, --agent SLUG (or both), or --deployment"
            )
        if options["deployment"] and (options["user"] or options["agent"]):
            raise CommandError("--deployment cannot be combined with --user or --agent")
        if options["period"] is None:
            raise CommandError("--period is required (day, month or total)")
        user = agent = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
        if options["agent"]:
            agent = Agent.objects.filter(agent_id=options["agent"]).first()
            if agent is None:
                raise CommandError(f"no agent {options['agent']!r}")
        is_active = True if options["enable"] else False if options["disable"] else UNSET
        try:
            budget, created = set_budget(
                user=user,
                agent=agent,
                period=options["period"],
                limit_usd=_usd(options["usd"]) if options["usd"] is not None else UNSET,
                limit_tokens=_count("tokens")(options["tokens"]) if options["tokens"] is not None else UNSET,
                max_concurrent=(
                    _count("max-concurrent")(options["max_concurrent"])
                    if options["max_concurrent"] is not None
                    else UNSET
                ),
                name=options["name"] if options["name"] is not None else UNSET,
                is_active=is_active,
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.fields or ''}") from exc
        self.stdout.write(
            f"{'created' if created else 'updated'} budget {budget.pk} ({budget.label}): "
            f"usd={budget.limit_usd if budget.limit_usd is not None else 'none'} "
            f"tokens={budget.limit_tokens if budget.limit_tokens is not None else 'none'} "
            f"max_concurrent={budget.max_concurrent if budget.max_concurrent is not None else 'none'}"
        )
