"""What every blobstore HTTP view shares: JSON errors, request bodies, keys."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from urllib.parse import unquote_to_bytes

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from blobstore.asgi import RECEIVE_KEY
from blobstore.exceptions import ObjectSizeExceededError
from blobstore.storage.base import BlobStream, validate_key

READ_CHUNK_SIZE = 1024 * 1024
INLINE_RESPONSE_SIZE = 1024 * 1024
"""Blobs up to this size are read whole before the response starts; larger ones stream."""
OCTET_STREAM = "application/octet-stream"

# Served blobs are data, never a page: no sniffing, no rendering, no scripts.
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class BadRequest(Exception):
    """The client asked for something malformed or impossible; status is 4xx."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    """Return the JSON error response that every API view answers with."""
    response = JsonResponse({"error": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="blobstore"'
    return response


def request_body(request: HttpRequest, limit: int | None) -> AsyncIterator[bytes]:
    """Return the request body as an async iterator of chunks, read as it arrives.

    A ``Content-Length`` over limit is refused with 413 at once, before any
    of the body is read; a longer body is the storage's to refuse
    (``ObjectSizeExceededError``, which :func:`storage_errors` turns into 413).
    """
    length = request.headers.get("Content-Length")
    if length is not None:
        if not is_number(length):
            raise BadRequest(400, f"Content-Length must be a number of bytes, not {length!r}.")
        if limit is not None and int(length) > limit:
            raise BadRequest(413, _too_large(limit))
    return _body_chunks(request)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Turn the storage's refusal of a blob into the HTTP error it means."""
    try:
        yield
    except ObjectSizeExceededError as large:
        raise BadRequest(413, _too_large(large.max_object_size)) from large


async def _body_chunks(request: HttpRequest) -> AsyncIterator[bytes]:
    receive = getattr(request, "scope", {}).get(RECEIVE_KEY)
    if receive is None:  # Django's own handler has read the body already
        while chunk := request.read(READ_CHUNK_SIZE):
            yield chunk
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "The client went away before the body was complete.")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def blob_response(stream: BlobStream, status: int = 200) -> HttpResponseBase:
    """Return a response carrying the stream's bytes: read at once when small, else streamed."""
    if stream.length <= INLINE_RESPONSE_SIZE:
        async with stream:
            body = await stream.read()
        response: HttpResponseBase = HttpResponse(body, status=status, content_type=OCTET_STREAM)
    else:
        response = StreamingHttpResponse(
            closing_chunks(stream), status=status, content_type=OCTET_STREAM
        )
    response["Content-Length"] = str(stream.length)
    return response


async def closing_chunks(stream: BlobStream) -> AsyncIterator[bytes]:
    """Yield the stream's chunks, and close it when they end or the consumer stops."""
    async with stream:
        async for chunk in stream:
            yield chunk


def _too_large(limit: int) -> str:
    return f"The body is larger than the limit of {limit} bytes."


def is_number(text: str) -> bool:
    """Return whether text is a non-negative whole number in ASCII digits."""
    # str.isdigit() alone would accept digits that int() refuses, such as '²'.
    return text.isascii() and text.isdigit()


def checked_key(key: str) -> str:
    """Return key if it is valid, or raise BadRequest (400)."""
    try:
        return validate_key(key)
    except ValueError as invalid:
        raise BadRequest(400, str(invalid)) from invalid


def require_utf8(request: HttpRequest) -> None:
    """Raise BadRequest (400) unless the percent-encoded path and query are UTF-8.

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
            raise BadRequest(400, "The URL's percent-encoded bytes are not UTF-8.") from None
