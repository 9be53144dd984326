"""The HTTP API: list, read, write and delete blobs, as JSON and raw bytes.

Every view is async and talks to the storage directly. Errors are JSON
``{"error": "..."}`` with a 4xx status; a client's mistake is never a 500,
nor a database that is busy or gone (503) or full (507).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import get_conditional_response
from django.utils.http import parse_etags, parse_http_date_safe
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from blobstore.api.auth import AccessDenied, authorize
from blobstore.api.responses import (
    EXPIRES_HEADER,
    MAX_CONTENT_LENGTH,
    META_HEADER_PREFIX,
    APIError,
    abbreviated,
    answer,
    blob_response,
    bounded_number,
    checked_key,
    error,
    etag,
    json_response,
    keep_out_of_shared_caches,
    request_body,
    require_utf8,
    with_blob_headers,
    without_controls,
)
from blobstore.storage import BlobInfo, StreamingStorage, storages
from blobstore.storage.base import DEFAULT_PAGE_SIZE, Attributes

API_STORAGE = "default"
"""The alias of BLOBSTORE_STORAGES that the API serves."""
MAX_PAGE_SIZE = 1000
MAX_DELIMITER_LENGTH = 16
OPEN_ATTEMPTS = 5
"""How often a GET looks again for a blob replaced between its record and its bytes."""
RECORD_HEADERS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_RANGE",
)
"""The request headers (as META names them) whose answer depends on the blob's record."""
# Headers are read from META throughout: request.headers would parse every
# header of a request to find one.
META_PREFIX = "HTTP_" + META_HEADER_PREFIX.upper().replace("-", "_")
EXPIRES_META = "HTTP_" + EXPIRES_HEADER.upper().replace("-", "_")


def storage() -> StreamingStorage:
    """Return the storage that the API serves."""
    return storages[API_STORAGE]  # type: ignore[return-value]


class APIView(View):
    """Authorize each request and turn refusals into JSON errors."""

    blobstore_api = True  # served without middleware by blobstore.asgi
    http_method_names = ["get", "head", "put", "delete", "options"]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., Any]:
        """Return the view, exempt from CsrfViewMiddleware: authorize() checks session requests."""
        # Here rather than on dispatch(): method_decorator would wrap it again on every request.
        return csrf_exempt(super().as_view(**initkwargs))

    async def dispatch(  # type: ignore[override]  # an async view's dispatch is a coroutine
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        method = request.method or ""
        allowed = method.lower() in self.http_method_names
        handler = getattr(self, method.lower(), None) if allowed else None
        if handler is None:
            return self.http_method_not_allowed(request)

        async def view() -> HttpResponse:
            try:
                require_utf8(request)
                user = (
                    None
                    if method == "OPTIONS"
                    else await authorize(request, method, kwargs.get("key"))
                )
                response: HttpResponse = await handler(request, *args, **kwargs)
            except AccessDenied as denied:
                return error(denied.status, denied.message)
            if user is not None and user.is_authenticated:
                keep_out_of_shared_caches(response)
            return response

        return await answer(request, view)  # type: ignore[return-value]

    def http_method_not_allowed(
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        allowed = ", ".join(name.upper() for name in self.http_method_names if hasattr(self, name))
        return error(
            405, f"Method {request.method} is not allowed here; use {allowed}.", {"Allow": allowed}
        )


class BlobListView(APIView):
    """``GET /``: keys with metadata, in key order, by prefix and in pages."""

    http_method_names = ["get", "head", "options"]

    async def get(self, request: HttpRequest) -> HttpResponse:
        prefix = without_controls("prefix", request.GET.get("prefix", ""))
        limit = _page_size(request.GET.get("limit"))
        after = _decode_cursor(request.GET.get("cursor"))
        delimiter = _delimiter(request.GET.get("delimiter"))
        try:
            if delimiter is None:
                entries: list[BlobInfo | str] = [
                    *await storage().list_blobs(prefix, after=after, limit=limit)
                ]
            else:
                entries = await storage().list_folder(
                    prefix, delimiter=delimiter, after=after, limit=limit
                )
        except ValueError as invalid:
            raise APIError(400, str(invalid)) from invalid
        last = entries[-1] if len(entries) == limit else None
        page: dict[str, Any] = {
            "blobs": [_describe(entry) for entry in entries if isinstance(entry, BlobInfo)],
            "cursor": None if last is None else _encode_cursor(_entry_key(last)),
        }
        if delimiter is not None:
            page["prefixes"] = [entry for entry in entries if isinstance(entry, str)]
        return json_response(page)

    head = get


class BlobView(APIView):
    """``/<key>``: the blob's bytes (GET, HEAD), a new version (PUT), its removal (DELETE)."""

    async def get(self, request: HttpRequest, key: str) -> HttpResponseBase:
        checked_key(key)
        # A conditional or ranged request is answered from the record first,
        # so that a 304 or a range opens no more of the blob than it needs.
        looks_first = any(name in request.META for name in RECORD_HEADERS)
        for _ in range(OPEN_ATTEMPTS):
            expected, byte_range = None, None
            if looks_first:
                expected = await storage().stat(key)
                if expected is None:
                    raise APIError(404, f"No blob has the key {key!r}.")
                conditional = _conditional(request, expected)
                if conditional is not None:
                    return conditional
                byte_range = _requested_range(request, expected)
            start, stop = byte_range or (0, None)
            stream = await storage().stream(key, start=start, stop=stop)
            if stream is None:
                raise APIError(404, f"No blob has the key {key!r}.")
            if expected is None or stream.info.sha256 == expected.sha256:
                response = await blob_response(stream, 206 if byte_range else 200)
                if byte_range:
                    response["Content-Range"] = (
                        f"bytes {start}-{stream.stop - 1}/{stream.info.size}"
                    )
                return with_blob_headers(response, stream.info)
            await stream.aclose()  # replaced since its record was read: look again
        raise APIError(409, f"The blob {key!r} kept changing while it was being read; try again.")

    async def head(self, request: HttpRequest, key: str) -> HttpResponseBase:
        info = await storage().stat(checked_key(key))
        if info is None:
            raise APIError(404, f"No blob has the key {key!r}.")
        conditional = _conditional(request, info)
        if conditional is not None:
            return conditional
        response = HttpResponse(status=200)
        response["Content-Length"] = str(info.size)
        return with_blob_headers(response, info)

    async def put(self, request: HttpRequest, key: str) -> HttpResponse:
        store = storage()
        checked_key(key)
        attributes = _attributes(request)
        limit = getattr(store, "max_object_size", None)
        async with request_body(request, limit, API_STORAGE) as body:
            created, info = await _write(request, store, key, body, attributes)
        response = json_response(_describe(info), status=201 if created else 200)
        response["ETag"] = etag(info)
        return response

    async def delete(self, request: HttpRequest, key: str) -> HttpResponse:
        await storage().evict(checked_key(key))
        return HttpResponse(status=204)


async def _write(
    request: HttpRequest,
    store: StreamingStorage,
    key: str,
    body: AsyncIterator[bytes],
    attributes: Attributes,
) -> tuple[bool, BlobInfo]:
    """Store body under key as the request's preconditions allow; return (created, record)."""
    if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
    if_match = request.META.get("HTTP_IF_MATCH")
    write = functools.partial(
        store.write,
        content_type=attributes.content_type,
        metadata=attributes.metadata,
        expires=attributes.expires,
    )
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise APIError(400, "PUT accepts only 'If-None-Match: *' (create only).")
        exists = await store.exists(key)
        info = None if exists else await write(key, body, if_absent=True)
        if info is None:
            raise APIError(412, f"A blob with the key {key!r} exists already.")
        return True, info
    if if_match is not None:
        current = await store.stat(key)
        wanted = parse_etags(if_match)
        if current is None or ("*" not in wanted and etag(current) not in wanted):
            raise APIError(
                412, "The blob does not match If-Match; read its current ETag and try again."
            )
        info = await write(key, body, if_sha256=current.sha256)
        if info is None:
            raise APIError(
                412,
                "The blob changed while it was being replaced; read its current ETag and "
                "try again.",
            )
        return False, info
    info = await write(key, body)
    assert info is not None  # an unconditional write always stores
    # Decided by the write itself: of two clients creating one key at once, one hears 201.
    return info.created == info.updated, info


def _conditional(request: HttpRequest, info: BlobInfo) -> HttpResponse | None:
    response = get_conditional_response(
        request, etag=etag(info), last_modified=int(info.updated.timestamp())
    )
    if response is None:
        return None
    if response.status_code == 412:
        return error(412, "The blob does not match the request's preconditions.")
    response["ETag"] = etag(info)
    return response


def _attributes(request: HttpRequest) -> Attributes:
    """Return the content type, metadata and expiry that a PUT's headers give, or raise 400."""
    # From META, as request.headers would name them: "X-Blobstore-Meta-Shot-At" is "shot-at".
    metadata = {
        name.removeprefix(META_PREFIX).replace("_", "-").lower(): value
        for name, value in request.META.items()
        if name.startswith(META_PREFIX)
    }
    try:
        return Attributes.validated(
            request.META.get("CONTENT_TYPE") or None, metadata, _expires(request)
        )
    except (TypeError, ValueError) as invalid:
        raise APIError(400, str(invalid)) from invalid


def _expires(request: HttpRequest) -> datetime.datetime | None:
    header = request.META.get(EXPIRES_META)
    if header is None:
        return None
    seconds = parse_http_date_safe(header)
    if seconds is None:
        raise APIError(
            400,
            f"{EXPIRES_HEADER} must be an HTTP date such as 'Wed, 21 Oct 2026 07:28:00 GMT', "
            f"not {abbreviated(header)!r}.",
        )
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _requested_range(request: HttpRequest, info: BlobInfo) -> tuple[int, int] | None:
    """Return the [start, stop) of a single satisfiable byte range, or None for the whole blob."""
    header = request.META.get("HTTP_RANGE")
    if header is None or not _if_range_holds(request, info):
        return None
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None  # a unit we do not serve: the whole blob (RFC 9110 §14.2)
    specs = ranges.split(",")
    if len(specs) > 1:
        return None  # several ranges: the whole blob, rather than multipart
    first, dash, last = specs[0].strip().partition("-")
    content_range = {"Content-Range": f"bytes */{info.size}"}
    malformed = APIError(
        416,
        f"The Range header {abbreviated(header)!r} is malformed; ask for one range of bytes "
        "such as 'bytes=0-99', 'bytes=100-' or 'bytes=-100' (the last 100).",
        content_range,
    )
    # Numbers past any blob's size are never converted whole.
    start = bounded_number(first, MAX_CONTENT_LENGTH) if first else None
    end = bounded_number(last, MAX_CONTENT_LENGTH) if last else None
    if (
        not dash
        or (start is None and end is None)
        or (first and start is None)
        or (last and end is None)
        or (start is not None and end is not None and end < start)  # RFC 9110 §14.1.1
    ):
        raise malformed
    within = f"bytes 0 to {info.size - 1}" if info.size else "none: the blob is empty"
    unsatisfiable = APIError(
        416,
        f"The range {abbreviated(header)!r} is not within the blob's {info.size} bytes; "
        f"it has {within}.",
        content_range,
    )
    if start is None:  # the last N bytes
        assert end is not None
        if end == 0 or info.size == 0:
            raise unsatisfiable
        return info.size - min(end, info.size), info.size
    if start >= info.size:
        raise unsatisfiable
    # A last position past the blob's end means its end (RFC 9110 §14.1.2).
    return start, info.size if end is None else min(end + 1, info.size)


def _if_range_holds(request: HttpRequest, info: BlobInfo) -> bool:
    """Return whether a Range may be served: If-Range is absent or names this version.

    Otherwise a download that resumes would splice two versions (RFC 9110 §13.1.5).
    """
    header: str | None = request.META.get("HTTP_IF_RANGE")
    if header is None:
        return True
    validator = header.strip()
    if validator.startswith('"'):
        return validator == etag(info)  # a strong comparison; a weak tag never matches
    since = parse_http_date_safe(validator)
    return since is not None and int(info.updated.timestamp()) == since


def _describe(info: BlobInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "sha256": info.sha256,
        "updated": info.updated.isoformat(),
        "content_type": info.content_type,
        "metadata": dict(info.metadata),
        "expires": None if info.expires is None else info.expires.isoformat(),
    }


def _entry_key(entry: BlobInfo | str) -> str:
    return entry if isinstance(entry, str) else entry.key


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_DELIMITER_LENGTH:
        raise APIError(
            400, f"delimiter must be 1 to {MAX_DELIMITER_LENGTH} characters, such as '/'."
        )
    return without_controls("delimiter", value)


def _page_size(value: str | None) -> int:
    if value is None:
        return min(DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    size = bounded_number(value, MAX_PAGE_SIZE + 1)
    if size is None or not 1 <= size <= MAX_PAGE_SIZE:
        raise APIError(
            400, f"limit must be a number from 1 to {MAX_PAGE_SIZE}, not {abbreviated(value)!r}."
        )
    return size


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise APIError(
            400,
            f"The cursor {abbreviated(cursor)!r} is not one this API gave out; pass the "
            "cursor of the previous page as it came, or none for the first page.",
        ) from None
    return without_controls("cursor", key)
