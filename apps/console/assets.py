"""The console's JS, CSS and icon, served by the console itself.

Why not STATIC_URL: WhiteNoise serves /static/ from STATIC_ROOT, which exists only after `collectstatic`
(`make run` does it; a test's live server or a plain `uvicorn` does not). The console should not depend on
that step, so it serves its own few files. They also live under static/console/ so that `collectstatic`
gathers them for a deployment that prefers a front server.

They are read once per process (a few KB) and answered with a strong ETag and `Cache-Control: no-cache`: the
browser revalidates each time and gets a 304 unless the file changed, so a deploy never serves stale JS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "console"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load() -> dict[str, Asset]:
    assets = {}
    for path in sorted(ASSETS_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        assets[path.name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return assets


_cached = cache(_load)


def get_asset(name: str) -> Asset | None:
    """The asset called `name` (a plain file name: the URL pattern admits no slash), or None."""
    # In development an edited file shows on reload; in production the files never change under a process.
    return (_load() if settings.DEBUG else _cached()).get(name)
