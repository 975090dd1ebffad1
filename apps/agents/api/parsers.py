"""JSON request bodies with a bounded nesting depth: the one loader for every endpoint.

`json.loads` recurses once per nesting level, so a 100 KB body of `[[[[...` raised RecursionError (a 500)
wherever it was parsed; a body a little less deep parsed fine and then broke whatever walked it next.
`loads_bounded` answers both with JSONTooDeep (a ValueError, so every caller's "not valid JSON" path turns
it into a 400). DRF views use `BoundedJSONParser` (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] and ApiMixin);
the OpenAI-compatible views call `loads_bounded` directly.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json as drf_json


class JSONTooDeep(ValueError):
    def __init__(self, max_depth: int) -> None:
        super().__init__(f"the JSON body is nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether `value` nests deeper than `max_depth`; iterative, so it cannot exhaust the stack itself."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads_bounded(raw: bytes | str, *, max_depth: int | None = None, strict: bool = True) -> Any:
    """json.loads, refusing NaN/Infinity (with `strict`) and bodies nested deeper than `max_depth`
    (default: settings.MAX_JSON_DEPTH). Raises ValueError (JSONTooDeep, JSONDecodeError, UnicodeDecodeError).
    """
    limit = int(settings.MAX_JSON_DEPTH) if max_depth is None else max_depth
    try:
        value = json.loads(raw, parse_constant=drf_json.strict_constant if strict else None)
    except RecursionError:
        raise JSONTooDeep(limit) from None
    # A body with at most `limit` brackets cannot nest deeper; most bodies are decided by these two counts.
    text = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if text.count(b"[") + text.count(b"{") > limit and _too_deep(value, limit):
        raise JSONTooDeep(limit)
    return value


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser over loads_bounded: a deep body is a 400 `parse_error`, never a RecursionError."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            return loads_bounded(raw, strict=self.strict)
        except JSONTooDeep as exc:
            raise ParseError(f"JSON parse error - {exc}", code="too_deep") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
