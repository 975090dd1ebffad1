"""Spend control's part of the reaper: the reservations no live process will settle.

A lost attempt's usage is unknown (its process died before the provider's answer, or before it was written),
and the provider may well have billed it. Releasing it as spending nothing would let a budget be overshot by
every worker that dies mid-call; it is settled at its reserved worst case instead (an upper bound of what the
provider can have billed: the prompt's bytes plus max_tokens at the model's highest rate), and counted as
estimated in the window (BudgetUsage.estimated_*, shown by GET /api/v1/usage/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from apps.agents.models import BudgetReservation
from apps.agents.models_budget import ReservationKind
from apps.agents.services.budget_ledger import Hold, Release, apply

logger = logging.getLogger(__name__)

#: Reservations released per round trip.
BATCH = 100


def _hold_of(row: BudgetReservation) -> Hold:
    windows = tuple((int(budget_id), datetime.fromisoformat(start)) for budget_id, start in row.windows)
    return Hold(row.pk, row.amount_units, row.tokens, windows, row.kind)


def release(rows: Iterable[BudgetReservation]) -> int:
    """Release reservations whose holder is gone, a spend one at its worst case (estimated). Returns how many
    were released (a row released meanwhile by its holder is skipped)."""
    rows = list(rows)
    releases = [
        Release(_hold_of(row), row.amount_units, row.tokens, estimated=row.kind == ReservationKind.SPEND)
        for row in rows
    ]
    released = 0
    for start in range(0, len(releases), BATCH):
        done = apply(releases[start : start + BATCH]).released
        for row, made in zip(rows[start : start + BATCH], done, strict=True):
            if made:
                released += 1
                logger.warning(
                    "released the %s reservation %s of a lost run (settled at its worst case)",
                    row.kind,
                    row.pk,
                    extra={"execution_id": str(row.execution_id)},
                )
    return released


def release_orphaned(
    *, lost: Iterable[Any] = (), now: datetime | None = None, grace: timedelta, sweep: bool = True
) -> int:
    """Release the reservations no live process will settle: those of runs the reaper just found lost
    (their worker is dead), and those of any ended run older than `grace` (a process that ended its run
    settles first; one whose row was ended under it, e.g. timed out, gets `grace` to settle its last
    attempt itself, with its real usage)."""
    from apps.agents.models import TERMINAL_STATUSES

    now = now or timezone.now()
    orphaned = Q(pk__in=[])
    if sweep:
        orphaned |= Q(execution__status__in=list(TERMINAL_STATUSES), created_at__lt=now - grace)
        orphaned |= Q(execution__isnull=True, created_at__lt=now - grace)
    lost = [str(pk) for pk in lost]
    if lost:
        orphaned |= Q(execution_id__in=lost)
    return release(BudgetReservation.objects.filter(orphaned).order_by("id")[:1000])
