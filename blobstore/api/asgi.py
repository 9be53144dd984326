"""Django's ASGI handler, with blobstore's API routes on a short path.

Use it in the site's ``asgi.py`` instead of Django's::

    from blobstore.asgi import get_asgi_application

    application = get_asgi_application()

:class:`ASGIHandler` is Django's own handler: every request is built, sent,
logged, cancelled when its client hangs up and finished (``request_finished``)
as Django does it. A request whose URL resolves to a blobstore API view
(``blobstore.urls``, ``blobstore.contrib.proxystore.urls``) differs in these
ways only:

- it skips ``MIDDLEWARE``, which Django runs through a thread hop per
  ``MiddlewareMixin`` middleware; the async middleware that
  ``BLOBSTORE_API_MIDDLEWARE`` lists run instead. ``ALLOWED_HOSTS`` still holds
  (``request.get_host()``; another ``Host`` is answered 400 in JSON).
- a body larger than ``BODY_PROGRESS`` (64 KiB), or of unknown length, is not
  gathered first: the view reads it from the connection as it arrives, so that
  a body over the storage's limit is refused as soon as it is over. A smaller
  one is read whole before the view runs, as Django reads every body, but into
  memory rather than a temporary file. Either
  way, a body that stops arriving ends with 408 (``BLOBSTORE_BODY_TIMEOUT``).
- ``request_started`` is not sent: its receivers are synchronous, a thread hop
  before the view could start.
- it runs outside Django's per-request ``ThreadSensitiveContext``, so the
  database statements of every API request share one thread and its
  persistent connection instead of a new thread (and connection) per request.

A storage fault becomes 503 or 507 (``blobstore.api.faults``); one while a response
streams cuts the response short with one warning in the log.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import DisallowedHost, ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import Resolver404, ResolverMatch, URLResolver, get_resolver, set_script_prefix
from django.utils.module_loading import import_string

from blobstore.api.faults import classify, close_broken_connections, fault_response, log_fault
from blobstore.api.responses import BODY_PROGRESS, RECEIVE_KEY, body_too_slow, error
from blobstore.conf import conf
from blobstore.storage.loop import for_sync_caller

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

MATCH_KEY = "blobstore.match"
"""The scope key that marks an API request, and holds its URL's match."""

UNKNOWN_HOST = (
    "The Host header names a host that this site does not serve; the site's ALLOWED_HOSTS "
    "must list it."
)
"""The error of a request whose Host is outside ALLOWED_HOSTS."""

security_logger = logging.getLogger("django.security.DisallowedHost")


def get_asgi_application() -> ASGIHandler:
    """Set Django up and return its ASGI handler with the API routes on the short path."""
    django.setup(set_prefix=False)
    return ASGIHandler()


def is_api_view(view: Callable[..., Any]) -> bool:
    """Return whether view is a blobstore API view, which runs without MIDDLEWARE."""
    return bool(getattr(getattr(view, "view_class", view), "blobstore_api", False))


class BodyChannel:
    """One connection's receive channel, shared by the view and Django's disconnect listener.

    Django's handler listens for the client's disconnection while the view
    runs. Here the listener is the channel's only reader: it hands the body's
    messages to the view one at a time, as the view asks for them, and
    returns the first message of another kind (``http.disconnect``).
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        # One message at a time: a body the view stops reading stays unread.
        self._body: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)

    async def receive_body(self) -> Message:
        """Return the next message of the request body, for the view."""
        return await self._body.get()

    async def __call__(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                return message
            await self._body.put(message)


class ASGIHandler(DjangoASGIHandler):
    """Django's ASGI handler, serving blobstore's API views on the short path."""

    def __init__(self) -> None:
        super().__init__()
        self.api = APIResponseHandler()
        self.closer = ResponseCloser()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = api_match(scope)
        if match is None:
            await super().__call__(scope, receive, send)
        else:
            # Not in a ThreadSensitiveContext of its own: see the module's docstring.
            await self.handle_api(match, scope, receive, send)

    async def handle_api(
        self, match: ResolverMatch, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Serve an API request as handle() does, but for the body and request_started.

        request_finished, sent when the response is closed, closes stale
        database connections.
        """
        set_script_prefix(get_script_prefix(scope))
        api_scope = {**scope, MATCH_KEY: match}
        if _small_body(scope):
            try:
                # Less than BODY_PROGRESS bytes in a timeout's time is too slow, as in a view.
                async with asyncio.timeout(conf.BLOBSTORE_BODY_TIMEOUT):
                    body_file = await read_small_body(receive)
            except RequestAborted:
                return  # as Django's handle(): the client left before its body was whole
            except TimeoutError:
                await self.answer_early(body_too_slow().response(), send)
                return
            listened: Receive = receive
        else:
            # The view reads the body through the channel, as it arrives.
            channel = BodyChannel(receive)
            api_scope[RECEIVE_KEY] = channel.receive_body
            body_file, listened = io.BytesIO(), channel
        request, refusal = self.create_request(api_scope, body_file)
        if request is None:
            assert refusal is not None  # create_request gives one or the other
            body_file.close()
            await self.answer_early(refusal, send)
            return
        try:
            response = await self.serve(request, listened, send)
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await self.closer.close(response)
        finally:
            # As Django's handle(): closing a response closes its request's body,
            # but a request that ends without one has nothing else to close it.
            body_file.close()

    async def serve(
        self, request: HttpRequest, listened: Receive, send: Send
    ) -> HttpResponseBase | None:
        """Send request's response; return it, or None if the client hung up before the view ended.

        As Django's handle(): a client that hangs up cancels the view. Here one
        task listens and cancels this one, where Django's starts a task group.
        """
        serving = asyncio.current_task()
        assert serving is not None
        listener = asyncio.get_running_loop().create_task(self.listen_for_disconnect(listened))
        hangup = HangUp(serving)
        listener.add_done_callback(hangup.heard)
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            # Only a cancellation of the listener's own, and no other, ends quietly.
            if not hangup.cancelled_serving or serving.uncancel() > 0:
                raise
            failure = listener.exception()
            if failure is not None and not isinstance(failure, RequestAborted):
                raise failure from None  # as a task group raises its task's failure
        else:
            if hangup.cancelled_serving:  # the view heard the cancellation, and answered
                serving.uncancel()
        finally:
            hangup.over = True
            listener.cancel()
        return response

    async def answer_early(self, response: HttpResponseBase, send: Send) -> None:
        """Send response to a request that reaches no view, and close it."""
        await self.send_response(response, send)
        await sync_to_async(response.close)()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Return the response, through the API's middleware for an API request."""
        if on_short_path(request):
            return await self.api.get_response_async(request)
        response: HttpResponseBase = await super().get_response_async(request)
        return response

    async def send_response(self, response: HttpResponseBase, send: Send) -> None:
        """Send the response; a storage fault while it streams cuts it short."""
        if not response.streaming and not response.has_header("Content-Length"):
            # What CommonMiddleware adds; without it the body would go out chunked.
            response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        try:
            await super().send_response(response, send)
        except Exception as exc:
            request = getattr(response, "_blobstore_request", None)
            fault = classify(exc)
            if fault is None or request is None:
                raise
            # The status went out already: the response ends short, and the
            # server closes the connection, which tells the client so.
            log_fault(request, exc, fault, outcome="response cut short")
            await sync_to_async(close_broken_connections)()


class HangUp:
    """Cancel a request's task when its disconnect listener ends, unless the request is over."""

    def __init__(self, serving: asyncio.Task[Any]) -> None:
        self.serving = serving
        self.over = False
        self.cancelled_serving = False

    def heard(self, listener: asyncio.Task[None]) -> None:
        """Cancel the request's task: the client hung up, or the listener failed."""
        # Scheduled when the listener ended, this may run after the request is over.
        if self.over or listener.cancelled():
            return
        self.cancelled_serving = True
        self.serving.cancel()


class ResponseCloser:
    """Close sent API responses in the thread of the API's statements, many in one hop.

    As Django does, each response is closed through sync_to_async, which
    sends request_finished to its synchronous receivers (that close stale
    database connections among them). Under load a hop per response costs the
    event loop more than the view did: the responses sent while a hop runs are
    closed together in the next one, each in turn, each still sending the signal.
    """

    def __init__(self) -> None:
        self._waiting: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[HttpResponseBase, asyncio.Future[None]]]
        ] = weakref.WeakKeyDictionary()
        self._closing: set[asyncio.Task[None]] = set()

    async def close(self, response: HttpResponseBase) -> None:
        """Close response; raise what its closing raised."""
        if for_sync_caller():
            # Its loop lasts one call, and its thread is the caller's: nothing to share.
            await sync_to_async(response.close)()
            return
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        waiting = self._waiting.setdefault(loop, [])
        waiting.append((response, closed))
        if len(waiting) == 1:
            task = loop.create_task(self._close_waiting(waiting))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await closed

    @staticmethod
    async def _close_waiting(waiting: list[tuple[HttpResponseBase, asyncio.Future[None]]]) -> None:
        try:
            while waiting:
                batch = waiting[:]
                outcomes = await sync_to_async(_close_all)([response for response, _ in batch])
                del waiting[: len(batch)]
                for (_, closed), failure in zip(batch, outcomes, strict=True):
                    _settle(closed, failure)
        except BaseException as failure:
            for _, closed in waiting:
                _settle(closed, failure)
            waiting.clear()
            raise


def _settle(closed: asyncio.Future[None], failure: BaseException | None) -> None:
    if closed.done():  # its request was cancelled meanwhile
        return
    if failure is None:
        closed.set_result(None)
    elif isinstance(failure, asyncio.CancelledError):
        closed.cancel()
    else:
        closed.set_exception(failure)


def _close_all(responses: list[HttpResponseBase]) -> list[Exception | None]:
    """Close each response; return what each raised, or None."""
    outcomes: list[Exception | None] = []
    for response in responses:
        try:
            response.close()
        except Exception as failure:
            outcomes.append(failure)
        else:
            outcomes.append(None)
    return outcomes


class APIResponseHandler(BaseHandler):
    """Django's response machinery for API views, with BLOBSTORE_API_MIDDLEWARE alone."""

    def __init__(self) -> None:
        super().__init__()
        self.load_api_middleware()

    def load_api_middleware(self) -> None:
        """Build the chain of the API's middleware, as Django builds MIDDLEWARE's."""
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # convert_exception_to_response keeps a coroutine function one.
        handler: Any = convert_exception_to_response(self._view_response)
        for path in reversed(conf.BLOBSTORE_API_MIDDLEWARE):
            middleware = api_middleware_class(path)(handler)
            if hasattr(middleware, "process_view"):
                self._view_middleware.insert(
                    0, self.adapt_method_mode(True, middleware.process_view)
                )
            if hasattr(middleware, "process_template_response"):
                self._template_response_middleware.append(
                    self.adapt_method_mode(True, middleware.process_template_response)
                )
            if hasattr(middleware, "process_exception"):
                self._exception_middleware.append(
                    self.adapt_method_mode(False, middleware.process_exception)
                )
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = self._host_checked(handler)

    @staticmethod
    def _host_checked(handler: AsyncGetResponse) -> AsyncGetResponse:
        async def host_checked(request: HttpRequest) -> HttpResponseBase:
            # What CommonMiddleware would do first: a Host outside ALLOWED_HOSTS
            # (DNS rebinding, a stray virtual host) reaches no view.
            try:
                request.get_host()
            except DisallowedHost as refused:
                security_logger.error(str(refused), extra={"status_code": 400, "request": request})
                response = error(400, UNKNOWN_HOST)
                response._has_been_logged = True  # type: ignore[attr-defined]
                return response
            return await handler(request)

        return host_checked

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """Return the match found in routing, unless a middleware has set request.urlconf."""
        if hasattr(request, "urlconf"):
            return super().resolve_request(request)
        match: ResolverMatch = request.scope[MATCH_KEY]  # type: ignore[attr-defined]
        request.resolver_match = match
        return match

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Return the response, with its request for the fault handling of send_response."""
        response: HttpResponseBase = await super().get_response_async(request)
        response._blobstore_request = request  # type: ignore[attr-defined]
        return response

    async def _view_response(self, request: HttpRequest) -> HttpResponseBase:
        try:
            response: HttpResponseBase = await self._get_response_async(request)  # type: ignore[attr-defined]
        except Exception as exc:
            fault = await fault_response(request, exc)
            if fault is None:
                raise
            return fault
        return response


async def read_small_body(receive: Receive) -> io.BytesIO:
    """Return a small body (its Content-Length, which the server holds it to), read whole.

    In memory, where Django's read_body() makes a temporary file that a
    cancellation (the body timeout) would leave open.
    """
    body = io.BytesIO()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted
        body.write(message.get("body", b""))
        if not message.get("more_body", False):
            body.seek(0)
            return body


def _small_body(scope: Scope) -> bool:
    """Return whether the request's body is known to be at most BODY_PROGRESS bytes."""
    length = transfer_encoding = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            transfer_encoding = value
    if transfer_encoding is not None:
        return False
    if length is None:
        # HTTP/1's framing: no length and no transfer coding means no body.
        return scope.get("http_version") in {"1.0", "1.1"}
    return length.isdigit() and len(length) <= 6 and int(length) <= BODY_PROGRESS


def on_short_path(request: HttpRequest) -> bool:
    """Return whether request came by the short path, which checks its host before any view."""
    return MATCH_KEY in getattr(request, "scope", {})


def api_match(scope: Scope) -> ResolverMatch | None:
    """Return the match of an HTTP request for an API view, else None."""
    if scope["type"] != "http":
        return None
    return _api_match(get_resolver(), scope["path"].removeprefix(scope.get("root_path", "")))


@functools.lru_cache(maxsize=1024)
def _api_match(resolver: URLResolver, path: str) -> ResolverMatch | None:
    # Cached: resolving walks the site's whole URLconf, on every request. A
    # new URLconf (ROOT_URLCONF changed) is a new resolver, so new entries.
    try:
        match = resolver.resolve(path)
    except Resolver404:
        return None
    return match if is_api_view(match.func) else None


def api_middleware_class(path: str) -> Callable[[AsyncGetResponse], AsyncGetResponse]:
    """Import the middleware at path, or raise ImproperlyConfigured if it is not async-capable."""
    try:
        middleware = import_string(path)
    except ImportError as missing:
        raise ImproperlyConfigured(
            f"BLOBSTORE_API_MIDDLEWARE names {path!r}, which cannot be imported: {missing}"
        ) from None
    if not getattr(middleware, "async_capable", False):
        raise ImproperlyConfigured(
            f"BLOBSTORE_API_MIDDLEWARE names {path!r}, which is not async-capable: "
            "the API routes run no synchronous middleware."
        )
    return middleware  # type: ignore[no-any-return]
