"""WhiteNoise without the cost of a sync middleware under ASGI.

WhiteNoise 6's middleware is synchronous only. One sync middleware makes Django run every request's inner
layers through `async_to_sync` from a worker thread: two thread hops per request, and, worse, the view's
async code then inherits that thread's CurrentThreadExecutor, which is gone once the view returns. A
streaming response whose body still writes to the database (an SSE run recording its outcome, or its
cancellation when the client leaves) then fails with "CurrentThreadExecutor already quit".

This subclass is async-capable: a request for a static file is served by WhiteNoise in a thread (file I/O),
everything else goes straight to the next layer on the event loop. Under WSGI it is WhiteNoise unchanged.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._is_async:
            return self.__acall__(request)
        return super().__call__(request)

    def _static_file(self, request: HttpRequest) -> Any:
        if self.autorefresh:
            return self.find_file(request.path_info)
        return self.files.get(request.path_info)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:  # DEBUG: looks on disk for every request
            static_file = await sync_to_async(self._static_file, thread_sensitive=False)(request)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)
