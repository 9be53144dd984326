"""What every blobstore HTTP view shares: JSON errors, request bodies, keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from django.core.exceptions import SuspiciousOperation
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import content_disposition_header, http_date

from blobstore.api.faults import UNREACHABLE_RETRY_AFTER, fault_response
from blobstore.conf import conf
from blobstore.exceptions import ObjectSizeExceededError, size_limit_advice
from blobstore.sizes import format_size
from blobstore.storage.base import BlobInfo, BlobStream, has_control_character, validate_key

READ_CHUNK_SIZE = 1024 * 1024
INLINE_RESPONSE_SIZE = 1024 * 1024
"""Blobs up to this size are read whole before the response starts; larger ones stream."""

LARGE_BODY = 1024 * 1024
"""A body larger than this, or of unknown length, holds an upload slot while it is written."""
UPLOAD_SLOT_WAIT = 5.0
"""Seconds a large upload waits for a slot before it is refused with 503."""
BODY_PROGRESS = 64 * 1024
"""Bytes a body must bring every BLOBSTORE_BODY_TIMEOUT seconds, or it is ended with 408."""
MAX_CONTENT_LENGTH = 2**63
"""No body is this long: a larger Content-Length is refused without being converted."""
RECEIVE_KEY = "blobstore.receive"
"""The scope key under which an API view finds the request body's messages, as they arrive."""

logger = logging.getLogger("blobstore.http")

# Served blobs are data, never a page: no sniffing, no rendering, no scripts.
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
}

PASSIVE_TYPES = frozenset(
    {
        *("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif"),
        *("audio/mpeg", "audio/ogg", "audio/wav", "audio/webm", "audio/flac", "audio/aac"),
        *("video/mp4", "video/webm", "video/ogg"),
        *("application/pdf", "text/plain"),
    }
)
"""The media types that no browser runs as a page; only these may be served inline."""

META_HEADER_PREFIX = "X-Blobstore-Meta-"
"""The prefix of the headers that carry a blob's metadata, one header a name."""
EXPIRES_HEADER = "X-Blobstore-Expires"
"""The header that carries a blob's expiry time, as an HTTP date."""
PRIVATE_CACHE_CONTROL = "private, no-cache"
"""The Cache-Control of a response made for one user: their own cache only, revalidated."""
VARY_BY_CREDENTIALS = ("Authorization", "Cookie")
"""The request headers that say whom a response was made for."""


class APIError(Exception):
    """The request cannot be served as asked: 4xx, or 503 when the server is too busy."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> HttpResponse:
        """Return the JSON error response that tells the client so."""
        return error(self.status, self.message, self.headers)


_JSON_ENCODER = DjangoJSONEncoder()


def json_response(data: Any, status: int = 200) -> HttpResponse:
    """Return data as a JSON response whose body ends with a newline, as text should.

    Every JSON body blobstore writes goes through here, so that ``curl`` leaves
    the shell's prompt on a line of its own.
    """
    # Encoded as JsonResponse encodes, but once (adding the newline to its body
    # would set the body twice), by one encoder, and to bytes, which the
    # response takes as they are, where a str would make it look up a charset.
    body = (_JSON_ENCODER.encode(data) + "\n").encode()
    response = HttpResponse(body, status=status, content_type="application/json")
    # Here as well as in answer(): some JSON is sent before any view (a Host
    # outside ALLOWED_HOSTS, a body that stalls).
    response["X-Content-Type-Options"] = "nosniff"
    return response


def error(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    """Return the JSON error response that every API view answers with."""
    response = json_response({"error": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="blobstore"'
    return response


async def answer(
    request: HttpRequest, view: Callable[[], Awaitable[HttpResponseBase]]
) -> HttpResponseBase:
    """Return view's response, or the JSON error that its refusal or a storage fault means."""
    response = await _answer(request, view)
    # JSON and blobs alike: a browser must never sniff a page out of them.
    response["X-Content-Type-Options"] = "nosniff"
    return response


async def _answer(
    request: HttpRequest, view: Callable[[], Awaitable[HttpResponseBase]]
) -> HttpResponseBase:
    try:
        return await view()
    except APIError as bad:
        return bad.response()
    except SuspiciousOperation as suspicious:  # e.g. too many query parameters
        return error(400, str(suspicious) or "The request is malformed.")
    except Exception as exc:
        response = await fault_response(request, exc)
        if response is None:
            raise
        return response


def request_body(request: HttpRequest, limit: int | None, alias: str) -> RequestBody:
    """Return the request body, to be read in an ``async with`` block as it arrives.

    A ``Content-Length`` over limit, the ``max_object_size`` of the storage
    alias, is refused with 413 at once, before any of the body is read; a
    longer body is the storage's to refuse: its ``ObjectSizeExceededError``
    in the block becomes 413 too.
    A body larger than :data:`LARGE_BODY`, or of unknown length, holds one of
    the process's ``BLOBSTORE_MAX_UPLOADS`` slots until the block ends.
    """
    return RequestBody(request, limit, alias)


class RequestBody:
    """The body of a request to store: an async context whose value iterates its chunks."""

    def __init__(self, request: HttpRequest, limit: int | None, alias: str) -> None:
        self.request = request
        self.limit = limit
        self.alias = alias
        self._slot: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> AsyncIterator[bytes]:
        declared = self.declared_length()
        if declared is None or declared > LARGE_BODY:
            slot = _upload_slot()
            await slot.__aenter__()
            self._slot = slot
        return _body_chunks(self.request)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        failure: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            await slot.__aexit__(kind, failure, traceback)
        if isinstance(failure, ObjectSizeExceededError):
            raise APIError(413, too_large(failure.max_object_size, self.alias)) from failure

    def declared_length(self) -> int | None:
        """Return the Content-Length, or None; raise APIError for one refused at once."""
        # From META: request.headers would parse every header to read this one.
        length = self.request.META.get("CONTENT_LENGTH")
        if length is None:
            return None
        declared = bounded_number(length, MAX_CONTENT_LENGTH)
        if declared is None:
            raise APIError(
                400, f"Content-Length must be a number of bytes, not {abbreviated(length)!r}."
            )
        if self.limit is not None and declared > self.limit:
            raise APIError(413, too_large(self.limit, self.alias))
        if declared >= MAX_CONTENT_LENGTH:
            raise APIError(413, "The body is larger than any this server accepts.")
        return declared


@dataclass
class _Slots:
    """The upload slots of one event loop (of the process, under an ASGI server)."""

    taken: int = 0
    freed: list[asyncio.Future[None]] = field(default_factory=list)


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _upload_slot() -> AsyncIterator[None]:
    """Hold an upload slot for the block, or raise APIError (503) when none frees in time."""
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, _Slots())
    deadline = loop.time() + UPLOAD_SLOT_WAIT
    while slots.taken >= conf.BLOBSTORE_MAX_UPLOADS:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise APIError(
                503,
                f"Too many uploads are under way (BLOBSTORE_MAX_UPLOADS allows "
                f"{conf.BLOBSTORE_MAX_UPLOADS} at once); nothing was stored. Try again in "
                f"{UNREACHABLE_RETRY_AFTER} seconds.",
                {"Retry-After": str(UNREACHABLE_RETRY_AFTER)},
            )
        freed = loop.create_future()
        slots.freed.append(freed)
        try:
            async with asyncio.timeout(remaining):
                await freed
        except TimeoutError:
            pass
        finally:
            if freed in slots.freed:
                slots.freed.remove(freed)
    slots.taken += 1
    try:
        yield
    finally:
        slots.taken -= 1
        # Every waiter looks again: one that gave up meanwhile takes none.
        for waiter in slots.freed:
            if not waiter.done():
                waiter.set_result(None)
        slots.freed.clear()


def body_too_slow() -> APIError:
    """Return the refusal (408) of a body that stopped arriving."""
    return APIError(
        408,
        f"The body arrived too slowly (less than {format_size(BODY_PROGRESS)} in "
        f"{conf.BLOBSTORE_BODY_TIMEOUT:g} seconds); nothing was stored. Send it faster, or "
        "raise BLOBSTORE_BODY_TIMEOUT.",
        {"Connection": "close"},
    )


async def _body_chunks(request: HttpRequest) -> AsyncIterator[bytes]:
    receive = getattr(request, "scope", {}).get(RECEIVE_KEY)
    if receive is None:  # the handler has read the body already
        while chunk := request.read(READ_CHUNK_SIZE):
            yield chunk
        return
    # A body that brings less than BODY_PROGRESS bytes in a timeout's time
    # holds a slot and a database connection for nothing: it ends with 408.
    timeout = conf.BLOBSTORE_BODY_TIMEOUT
    loop = asyncio.get_running_loop()
    deadline, progress = loop.time() + timeout, 0
    while True:
        try:
            # Not wait_for(): on Python 3.11 it swallows a cancellation (the
            # client's hang-up) that comes as the message does.
            async with asyncio.timeout(max(deadline - loop.time(), 0)):
                message = await receive()
        except TimeoutError:
            raise body_too_slow() from None
        if message["type"] == "http.disconnect":
            logger.debug("%s %s: the client went away mid-body", request.method, request.path)
            raise APIError(400, "The client went away before the body was complete.")
        body = message.get("body", b"")
        progress += len(body)
        if progress >= BODY_PROGRESS:
            deadline, progress = loop.time() + timeout, 0
        yield body
        if not message.get("more_body", False):
            return


async def blob_response(stream: BlobStream, status: int = 200) -> HttpResponseBase:
    """Return a response carrying the stream's bytes: read at once when small, else streamed."""
    content_type = stream.info.content_type
    if stream.length <= INLINE_RESPONSE_SIZE:
        async with stream:
            body = await stream.read()
        response: HttpResponseBase = HttpResponse(body, status=status, content_type=content_type)
    else:
        response = StreamingHttpResponse(
            closing_chunks(stream), status=status, content_type=content_type
        )
    response["Content-Length"] = str(stream.length)
    return response


def with_blob_headers(response: HttpResponseBase, info: BlobInfo) -> HttpResponseBase:
    """Return response with the headers that describe info and keep it from running as a page."""
    response["Content-Type"] = info.content_type
    headers = {
        **SAFE_HEADERS,
        "Content-Disposition": content_disposition(info),
        "ETag": etag(info),
        "Last-Modified": http_date(info.updated.timestamp()),
        "Accept-Ranges": "bytes",
    }
    if info.expires is not None:
        headers[EXPIRES_HEADER] = http_date(info.expires.timestamp())
    for name, value in info.metadata.items():
        headers[META_HEADER_PREFIX + name] = value
    for name, value in headers.items():
        response[name] = value
    return response


def content_disposition(info: BlobInfo) -> str:
    """Return the Content-Disposition of info: inline only for a passive type the site opened."""
    media_type = info.content_type.partition(";")[0].strip()
    inline = media_type in PASSIVE_TYPES and media_type in conf.BLOBSTORE_INLINE_TYPES
    return content_disposition_header(not inline, download_name(info.key)) or "attachment"


def download_name(key: str) -> str:
    """Return the file name to save a blob as: the last segment of its key."""
    return key.rstrip("/").rsplit("/", 1)[-1] or "blob"


def keep_out_of_shared_caches(response: HttpResponseBase) -> None:
    """Mark response, made for one user, as for that user's own cache only.

    ``no-cache`` still lets the browser keep it and revalidate it (304).
    """
    if response.has_header("Cache-Control") or response.has_header("Vary"):
        patch_cache_control(response, private=True, no_cache=True)
        patch_vary_headers(response, VARY_BY_CREDENTIALS)
    else:
        # What the two calls above write, without parsing headers that are not
        # there: they cost some 20 µs on every authenticated response.
        response.headers["Cache-Control"] = PRIVATE_CACHE_CONTROL
        response.headers["Vary"] = ", ".join(VARY_BY_CREDENTIALS)


def etag(info: BlobInfo) -> str:
    """Return the strong entity tag of info's version: its SHA-256."""
    return f'"{info.sha256}"'


async def closing_chunks(stream: BlobStream) -> AsyncIterator[bytes]:
    """Yield the stream's chunks, and close it when they end or the consumer stops."""
    async with stream:
        async for chunk in stream:
            yield chunk


def too_large(limit: int, alias: str) -> str:
    """Return the message of a 413: the limit of the storage alias, and how to raise it."""
    return (
        f"The body is larger than the limit of {format_size(limit)}; nothing was stored. "
        f"{size_limit_advice(alias)}"
    )


def is_number(text: str) -> bool:
    """Return whether text is a non-negative whole number in ASCII digits."""
    # str.isdigit() alone would accept digits that int() refuses, such as '²'.
    return text.isascii() and text.isdigit()


def bounded_number(text: str, ceiling: int) -> int | None:
    """Return the whole number text names, at most ceiling; None if text is not one.

    Digits beyond the ceiling's are never converted: int() of thousands of
    digits is slow, and refused past Python's int-string limit.
    """
    if not is_number(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(ceiling)):
        return ceiling
    return min(int(digits), ceiling)


def without_controls(name: str, text: str) -> str:
    """Return text, or raise APIError (400) if it has a control character, as no key has."""
    if has_control_character(text):
        raise APIError(400, f"{name} must not contain control characters; no key has them.")
    return text


def abbreviated(text: str, size: int = 40) -> str:
    """Return text, cut to size characters (and '...') if longer, to quote in a message."""
    return text if len(text) <= size else f"{text[:size]}..."


def checked_key(key: str) -> str:
    """Return key if it is valid, or raise APIError (400)."""
    try:
        return validate_key(key)
    except ValueError as invalid:
        raise APIError(400, str(invalid)) from invalid


def require_utf8(request: HttpRequest) -> None:
    """Raise APIError (400) unless the percent-encoded path and query are UTF-8.

    ASGI servers replace bytes that are not UTF-8 with U+FFFD, which would
    turn different keys into one.
    """
    scope = getattr(request, "scope", {})
    for part in (scope.get("raw_path") or b"", scope.get("query_string") or b""):
        if isinstance(part, str):  # Django's test client gives a str
            part = part.encode("latin-1")
        try:
            unquote_to_bytes(part).decode()
        except UnicodeDecodeError:
            raise APIError(
                400, "The URL's percent-encoded bytes are not UTF-8; percent-encode keys as UTF-8."
            ) from None
