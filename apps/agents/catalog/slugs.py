"""The catalog's slugs are reserved: a user cannot take one, even before `seed_agents` has run, so a seeded
agent never finds its slug held by a user's private agent (seed_catalog would then have to skip it).

A catalog file's name is its agent_id (the loader enforces it), so the names are the slugs: no file is
parsed here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CATALOG_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=4)
def catalog_slugs(directory: Path = CATALOG_DIR) -> frozenset[str]:
    return frozenset(path.stem for path in directory.glob("*.yaml"))


def is_catalog_slug(agent_id: str) -> bool:
    return agent_id in catalog_slugs()
