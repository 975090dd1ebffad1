"""What `make run` prepares before it starts anything (run as a script, before Django is configured):

    python config/launch.py secret-key    # a random SECRET_KEY in .env, when .env has none

Settings refuse to start without SECRET_KEY when DEBUG is off, so the first `make run` on a machine writes
one; every later start (make run, uvicorn, manage.py, Celery) reads the same key from .env. The file is
created readable by its owner only.

uvicorn believes X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1 unless told otherwise; the server
(config/serve.py) gives it the list the application uses, `trusted_proxies()` (TRUSTED_PROXIES, from the
environment or .env), and switches proxy headers off when the list is empty (the default).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
_SECRET_KEY_LINE = re.compile(r"^\s*(?:export\s+)?SECRET_KEY\s*=(?P<value>.*)$")


def env_file() -> Path | None:
    """The .env settings read (ENV_FILE, as in config/settings.py; empty: none)."""
    path = os.environ.get("ENV_FILE", str(BASE_DIR / ".env"))
    return Path(path) if path else None


def _value(raw: str) -> str:
    value = raw.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def new_secret_key() -> str:
    # URL-safe characters only: no `$` (django-environ expands it), `#` or quotes for .env to misread.
    return secrets.token_urlsafe(50)


def ensure_secret_key(path: Path) -> bool:
    """Give `path` a SECRET_KEY line with a random key unless it already sets a non-empty one. An empty
    `SECRET_KEY=` line is filled in place (the first occurrence of a name is the one that counts). True
    when the file was written."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    empty_at = None
    for index, line in enumerate(lines):
        match = _SECRET_KEY_LINE.match(line)
        if match:
            if _value(match.group("value")):
                return False
            empty_at = index
            break
    line = f"SECRET_KEY={new_secret_key()}"
    if empty_at is None:
        lines += [
            "# Written by `make run` (config/launch.py): signs sessions and tokens. Keep it secret.",
            line,
        ]
    else:
        lines[empty_at] = line
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return True


def trusted_proxies() -> list[str]:
    """TRUSTED_PROXIES as settings see it: the environment first, then .env."""
    raw = os.environ.get("TRUSTED_PROXIES")
    path = env_file()
    if raw is None and path is not None and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*(?:export\s+)?TRUSTED_PROXIES\s*=(.*)$", line)
            if match:
                raw = _value(match.group(1))
                break
    entries = [entry.strip() for entry in (raw or "").split(",") if entry.strip()]
    for entry in entries:
        ipaddress.ip_network(entry, strict=False)  # ValueError: not an address or a network
    return entries


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "secret-key":
        path = env_file()
        if path is not None and ensure_secret_key(path):
            print(f"Wrote a new random SECRET_KEY to {path}", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
