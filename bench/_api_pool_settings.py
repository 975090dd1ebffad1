"""bench/api.py's "pool" variant: the project settings with a psycopg connection pool (Django 5.1+), which is
how Django recommends reusing connections under ASGI (CONN_MAX_AGE must then be 0)."""

from config.settings import *  # noqa: F403
from config.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 16, "timeout": 30}
