"""An ASGI application that serves blobstore's API routes on a short path.

Use it in the site's ``asgi.py`` instead of Django's::

    from blobstore.asgi import get_asgi_application

    application = get_asgi_application()

Requests whose URL resolves to a blobstore API view (``blobstore.urls`` and
``blobstore.contrib.proxystore.urls``) skip ``MIDDLEWARE``: Django runs each
``MiddlewareMixin`` middleware through a thread hop, several per request,
which costs more than the work itself. Those views authenticate by themselves
(tokens, or the session with Django's CSRF check). ``request_started`` is not
sent; ``request_finished`` is, once the response has gone out, and closes
stale database connections as usual. The body
of a request is not gathered first: the view reads it from the connection, so
a body over the storage's limit is refused as soon as it is over, and one that
stops arriving ends with 408 (``BLOBSTORE_BODY_TIMEOUT``). A database that
fails while a response streams cuts the response short with one warning in the
log; a client that hangs up is no error. Every other request goes to Django's
own handler, untouched.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application as get_django_asgi_application
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.http import HttpResponseBase
from django.urls import Resolver404, ResolverMatch, get_resolver

from blobstore.faults import classify, close_broken_connections, fault_response, log_fault

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RECEIVE_KEY = "blobstore.receive"
"""The scope key under which a view finds the connection's receive channel."""

SEND_CHUNK_SIZE = 1024 * 1024
logger = logging.getLogger("django.request")


def get_asgi_application() -> ASGIApp:
    """Return Django's ASGI application with blobstore's API routes on the short path."""
    return APIRouter(get_django_asgi_application())


def is_api_view(view: Callable[..., Any]) -> bool:
    """Return whether view is a blobstore API view, which needs no middleware."""
    return bool(getattr(getattr(view, "view_class", view), "blobstore_api", False))


class APIRouter:
    """Send API requests to :class:`APIHandler` and everything else to django_app.

    ``APIRouter(app)`` wraps any Django ASGI application, for example one
    already wrapped by ``ASGIStaticFilesHandler``.
    """

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app
        self.handler = APIHandler()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self._match(scope) if scope["type"] == "http" else None
        if match is None:
            await self.django_app(scope, receive, send)
        else:
            await self.handler(match, scope, receive, send)

    @staticmethod
    def _match(scope: Scope) -> ResolverMatch | None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return None
        return match if is_api_view(match.func) else None


class APIHandler:
    """Serve one request with its view alone, as Django would with no middleware."""

    async def __call__(
        self, match: ResolverMatch, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # No request_started: its receivers are sync, so sending it costs a
        # thread hop before the view can start. request_finished, sent when the
        # response is closed after it went out, closes stale connections.
        # The view reads the body from receive itself; Django's own handler would
        # first gather all of it, before anything could refuse it.
        request = ASGIRequest({**scope, RECEIVE_KEY: receive}, io.BytesIO())
        request.resolver_match = match
        try:
            response = await match.func(request, *match.args, **match.kwargs)
        except Exception as exc:
            response = await fault_response(request, exc) or await sync_to_async(
                response_for_exception
            )(request, exc)
        try:
            await self.send_response(response, send, head=request.method == "HEAD")
        except Exception as exc:
            fault = classify(exc)
            if fault is None:
                raise
            # The status went out already: the response ends short, and the
            # server closes the connection, which tells the client so.
            log_fault(request, exc, fault, outcome="response cut short")
            await sync_to_async(close_broken_connections)()
        finally:
            # Closing the response sends request_finished, which closes old connections.
            await sync_to_async(response.close, thread_sensitive=True)()

    @staticmethod
    async def send_response(response: HttpResponseBase, send: Send, *, head: bool) -> None:
        if not response.streaming and not response.has_header("Content-Length"):
            # What CommonMiddleware would add; without it the body goes out chunked.
            response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        headers = [
            (name.encode("latin-1"), str(value).encode("latin-1"))
            for name, value in response.items()
        ]
        headers += [
            (b"Set-Cookie", cookie.output(header="").strip().encode("latin-1"))
            for cookie in response.cookies.values()
        ]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        if response.streaming:
            async for chunk in response:  # type: ignore[attr-defined]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        content = response.content  # type: ignore[attr-defined]
        # Slices of a large body, so that the server's write buffer stays small.
        for start in range(0, max(len(content), 1), SEND_CHUNK_SIZE):
            end = start + SEND_CHUNK_SIZE
            await send(
                {
                    "type": "http.response.body",
                    "body": content[start:end],
                    "more_body": end < len(content),
                }
            )
