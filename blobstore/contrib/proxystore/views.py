"""The ProxyStore 1.1 endpoint routes: /endpoint, /exists, /get, /set, /evict.

They take no credentials, so they are a closed door: only hosts in
``ALLOWED_HOSTS``, only allowed client addresses, never a request that a
browser sends for a page (one with an ``Origin``, or a ``Sec-Fetch-Site``
other than ``none``), and only the blobs under the configured prefix.
"""

from __future__ import annotations

import functools
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from blobstore.api.asgi import UNKNOWN_HOST, on_short_path
from blobstore.api.responses import (
    APIError,
    abbreviated,
    answer,
    blob_response,
    checked_key,
    error,
    json_response,
    request_body,
    require_utf8,
    with_blob_headers,
)
from blobstore.contrib.proxystore import (
    allowed_networks,
    endpoint_uuid,
    key_prefix,
    storage_alias,
)
from blobstore.storage import StreamingStorage, storages

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
View = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponseBase]]

BROWSER_INITIATED = "none"
"""The one ``Sec-Fetch-Site`` let through: a user typed the URL; no page asked for it."""


def endpoint_route(method: str) -> Callable[[View], View]:
    """Make a view answer only method, only to requests the door lets in, with JSON errors."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def route(request: HttpRequest) -> HttpResponseBase:
            refusal = _refusal(request)
            if refusal is not None:
                return refusal
            if request.method != method:
                return error(405, f"Use {method} here.", {"Allow": method})

            async def checked_view() -> HttpResponseBase:
                require_utf8(request)
                _check_endpoint(request.GET.get("endpoint"))
                return await view(request)

            return await answer(request, checked_view)

        route.blobstore_api = True  # type: ignore[attr-defined]  # no middleware: blobstore.asgi
        return route

    return decorate


@endpoint_route("GET")
async def endpoint(request: HttpRequest) -> HttpResponse:
    """Name this endpoint's UUID."""
    return json_response({"uuid": str(endpoint_uuid())})


@endpoint_route("GET")
async def exists(request: HttpRequest) -> HttpResponse:
    """Say whether a blob is stored under the key."""
    return json_response({"exists": await _storage().exists(_key(request))})


@endpoint_route("GET")
async def get(request: HttpRequest) -> HttpResponseBase:
    """Answer the blob's bytes, or 404."""
    stream = await _storage().stream(_key(request))
    if stream is None:
        return error(404, "No data is associated with the key.")
    # The headers of the REST route: the blob is data, never a page.
    return with_blob_headers(await blob_response(stream), stream.info)


@endpoint_route("POST")
async def set(request: HttpRequest) -> HttpResponse:
    """Store the request body under the key; an empty body is 400, as ProxyStore's."""
    key = _key(request)
    alias = storage_alias()
    store = _storage()
    async with request_body(request, getattr(store, "max_object_size", None), alias) as body:
        await store.write(key, await _not_empty(body))
    return HttpResponse(status=200)


@endpoint_route("POST")
async def evict(request: HttpRequest) -> HttpResponse:
    """Remove the blob stored under the key."""
    await _storage().evict(_key(request))
    return HttpResponse(status=200)


def _storage() -> StreamingStorage:
    return storages[storage_alias()]  # type: ignore[return-value]


def _key(request: HttpRequest) -> str:
    key = request.GET.get("key")
    if key is None:
        raise APIError(400, "The request has no key parameter; add ?key=KEY to the URL.")
    return checked_key(key_prefix() + key)


async def _not_empty(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Return body's chunks, or raise APIError (400) if it brings no byte at all."""
    async for chunk in body:
        if chunk:
            return _chained(chunk, body)
    raise APIError(400, "The request has an empty body; nothing was stored.")


async def _chained(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _check_endpoint(value: str | None) -> None:
    # ProxyStore names the endpoint it means. Like ProxyStore's own endpoint
    # with no peers, this one serves a well-formed foreign UUID from its own
    # storage; only a malformed one is refused.
    if value is None:
        return
    try:
        uuid.UUID(value)
    except ValueError:
        raise APIError(400, f"endpoint must be a UUID, not {abbreviated(value)!r}.") from None


def _refusal(request: HttpRequest) -> HttpResponseBase | None:
    """Return the response that refuses a request the door is closed to, else None."""
    if not on_short_path(request):  # which has checked the host already
        try:
            request.get_host()
        except DisallowedHost:
            return error(400, UNKNOWN_HOST)
    # A page in a browser, on whatever origin, must not reach these routes:
    # browsers send Origin with every cross-origin request and every POST,
    # and Sec-Fetch-Site with every request they make for a page.
    # From META: request.headers would parse every header to read these two.
    if "HTTP_ORIGIN" in request.META:
        return error(403, "The ProxyStore endpoint routes refuse requests with an Origin.")
    fetch_site = request.META.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None and fetch_site != BROWSER_INITIATED:
        return error(403, "The ProxyStore endpoint routes refuse requests made by web pages.")
    if not _client_allowed(request.META.get("REMOTE_ADDR", "")):
        return error(
            403,
            "This client may not use the ProxyStore endpoint routes; the site's "
            "BLOBSTORE_PROXYSTORE['ALLOWED_CLIENTS'] must list its address to let it in.",
        )
    return None


def _client_allowed(address: str) -> bool:
    return _in_networks(address, allowed_networks())


@functools.lru_cache(maxsize=256)
def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in network for network in networks)
