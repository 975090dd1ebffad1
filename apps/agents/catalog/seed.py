"""Write the catalog to the database as shared agents, idempotently (`manage.py seed_agents`).

How a user's edit is told apart from an old catalog version: every seeded row stores `catalog_hash`, the
hash of the managed values written to it. If the row's current values still hash to it, nobody touched the
agent since it was seeded, so a newer catalog version may replace it; if they do not, someone edited it in
the admin or the API, and it is kept unless `force`. A row already equal to the catalog is left alone, so a
second run writes nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from apps.agents.catalog.loader import MANAGED_FIELDS, CatalogEntry, load_catalog
from apps.agents.models import Agent

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SeedReport:
    """The agent_ids in each outcome of one seeding run."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Edited by a user since they were seeded; kept as they are (use force to overwrite).
    kept_edited: list[str] = field(default_factory=list)
    #: The slug belongs to a user's private agent; never taken over, even with force.
    conflicts: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated)


def values_hash(values: Mapping[str, Any]) -> str:
    """A stable hash of managed values. Keys are sorted at every level: PostgreSQL's jsonb does not keep
    the key order of output_schema, and the hash must not change because of that."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def row_values(agent: Agent) -> dict[str, Any]:
    return {name: getattr(agent, name) for name in MANAGED_FIELDS}


def seed_catalog(
    *, entries: Iterable[CatalogEntry] | None = None, force: bool = False, dry_run: bool = False
) -> SeedReport:
    """Create or update the catalog's agents. One transaction: a failure (or a dry run) leaves the database
    as it was."""
    entries = load_catalog() if entries is None else tuple(entries)
    report = SeedReport()
    with transaction.atomic():
        # Row locks (PostgreSQL) so that two concurrent seeds do not both decide on the same stale row.
        existing = {
            agent.agent_id: agent
            for agent in Agent.objects.select_for_update().filter(agent_id__in=[e.agent_id for e in entries])
        }
        for entry in entries:
            _seed_one(entry, existing.get(entry.agent_id), force=force, report=report)
        if dry_run:
            transaction.set_rollback(True)
    return report


def _seed_one(entry: CatalogEntry, row: Agent | None, *, force: bool, report: SeedReport) -> None:
    target = entry.agent_values()
    target_hash = values_hash(target)
    slug = entry.agent_id
    if row is None:
        Agent.objects.create(agent_id=slug, owner=None, catalog_hash=target_hash, **target)
        logger.debug("catalog agent %s created", slug)
        report.created.append(slug)
        return
    if row.owner_id is not None:
        logger.warning("catalog agent %s not seeded: the slug is a user's private agent", slug)
        report.conflicts.append(slug)
        return
    current_hash = values_hash(row_values(row))
    if current_hash == target_hash:
        if row.catalog_hash != target_hash:
            # Equal values but no (or an old) stamp: adopt the row without touching updated_at.
            Agent.objects.filter(pk=row.pk).update(catalog_hash=target_hash)
        report.unchanged.append(slug)
        return
    if current_hash != row.catalog_hash and not force:
        logger.info("catalog agent %s kept: edited since it was seeded", slug)
        report.kept_edited.append(slug)
        return
    for name, value in target.items():
        setattr(row, name, value)
    row.catalog_hash = target_hash
    row.save(update_fields=[*target, "catalog_hash", "updated_at"])
    logger.debug("catalog agent %s updated%s", slug, " (forced)" if force else "")
    report.updated.append(slug)
