"""The ProxyStore 1.1 endpoint routes: /endpoint, /exists, /get, /set, /evict."""

from __future__ import annotations

import functools
import ipaddress
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from blobstore.contrib.proxystore import allowed_networks, endpoint_uuid
from blobstore.http import (
    BadRequest,
    abbreviated,
    answer,
    blob_response,
    checked_key,
    error,
    request_body,
    require_utf8,
    storage_errors,
)
from blobstore.storage import StreamingStorage, storages

View = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponseBase]]


def endpoint_route(method: str) -> Callable[[View], View]:
    """Make a view answer only method, only to allowed clients, with JSON errors."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def route(request: HttpRequest) -> HttpResponseBase:
            if request.method != method:
                return error(405, f"Use {method} here.", {"Allow": method})
            if not _client_allowed(request.META.get("REMOTE_ADDR", "")):
                return error(403, "This client may not use the ProxyStore endpoint routes.")

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
    return JsonResponse({"uuid": str(endpoint_uuid())})


@endpoint_route("GET")
async def exists(request: HttpRequest) -> HttpResponse:
    """Say whether a blob is stored under the key."""
    return JsonResponse({"exists": await _storage().exists(_key(request))})


@endpoint_route("GET")
async def get(request: HttpRequest) -> HttpResponseBase:
    """Answer the blob's bytes, or 404."""
    stream = await _storage().stream(_key(request))
    if stream is None:
        return error(404, "No data is associated with the key.")
    response = await blob_response(stream)
    response["X-Content-Type-Options"] = "nosniff"
    return response


@endpoint_route("POST")
async def set(request: HttpRequest) -> HttpResponse:
    """Store the request body under the key."""
    key = _key(request)
    store = _storage()
    async with request_body(request, getattr(store, "max_object_size", None)) as body:
        with storage_errors():
            await store.write(key, body)
    return HttpResponse(status=200)


@endpoint_route("POST")
async def evict(request: HttpRequest) -> HttpResponse:
    """Remove the blob stored under the key."""
    await _storage().evict(_key(request))
    return HttpResponse(status=200)


def _storage() -> StreamingStorage:
    return storages["default"]  # type: ignore[return-value]


def _key(request: HttpRequest) -> str:
    key = request.GET.get("key")
    if key is None:
        raise BadRequest(400, "The request has no key parameter.")
    return checked_key(key)


def _check_endpoint(value: str | None) -> None:
    # ProxyStore names the endpoint it means; this one serves only itself (no peering).
    if value is None:
        return
    try:
        named = uuid.UUID(value)
    except ValueError:
        raise BadRequest(400, f"endpoint must be a UUID, not {abbreviated(value)!r}.") from None
    if named != endpoint_uuid():
        raise BadRequest(400, f"This endpoint is {endpoint_uuid()} and forwards to no peers.")


def _client_allowed(address: str) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in network for network in allowed_networks())
