"""JSON that always encodes. An error message may quote what the client sent ('"\\ud800" is not a valid
choice'); a lone surrogate cannot be written as UTF-8, and DRF's renderer would turn the client's 400 into
our 500. Such a response is rendered again with every non-ASCII character escaped, which is valid JSON."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer


class SafeJSONRenderer(JSONRenderer):
    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            escaped = type(self)()
            escaped.ensure_ascii = True
            return JSONRenderer.render(escaped, data, accepted_media_type, renderer_context)
