"""Middleware for the tests of BLOBSTORE_API_MIDDLEWARE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class MarkingMiddleware:
    """Add ``X-Marked: yes`` to every response: an async-only middleware."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        response["X-Marked"] = "yes"
        return response


def sync_only_middleware(get_response: Callable[[HttpRequest], HttpResponseBase]) -> object:
    """Return a synchronous middleware, which the API routes cannot keep."""
    return get_response
