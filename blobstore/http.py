"""What every blobstore HTTP view shares: JSON errors, request bodies, keys."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from urllib.parse import unquote_to_bytes

from django.http import HttpRequest, JsonResponse

from blobstore.asgi import RECEIVE_KEY
from blobstore.storage.base import validate_key

READ_CHUNK_SIZE = 1024 * 1024


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


async def read_body(request: HttpRequest, limit: int | None) -> bytes:
    """Return the request body, or refuse it with 413 as soon as it is over limit."""
    length = request.headers.get("Content-Length")
    if length is not None:
        if not is_number(length):
            raise BadRequest(400, f"Content-Length must be a number of bytes, not {length!r}.")
        if limit is not None and int(length) > limit:
            raise BadRequest(413, _too_large(limit))
    # BytesIO grows in place and hands its buffer over without a copy.
    body = io.BytesIO()
    async for chunk in _body_chunks(request):
        body.write(chunk)
        if limit is not None and body.tell() > limit:
            raise BadRequest(413, _too_large(limit))
    return body.getvalue()


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
