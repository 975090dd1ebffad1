"""The specialist agent catalog (the seed's "Phase 5" team): one YAML file per agent in this folder.

`load_catalog()` reads and validates every file; `seed_catalog()` (manage.py seed_agents) writes them to the
database as shared agents, idempotently, without overwriting an agent a user has edited unless forced.
"""

from apps.agents.catalog.loader import (
    CATALOG_DIR,
    MANAGED_FIELDS,
    CatalogEntry,
    CatalogError,
    CatalogExample,
    load_catalog,
    load_entry,
)
from apps.agents.catalog.seed import SeedReport, seed_catalog

__all__ = [
    "CATALOG_DIR",
    "MANAGED_FIELDS",
    "CatalogEntry",
    "CatalogError",
    "CatalogExample",
    "SeedReport",
    "load_catalog",
    "load_entry",
    "seed_catalog",
]
