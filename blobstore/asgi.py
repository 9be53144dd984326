"""The ASGI application with the API's short path, re-exported from blobstore.api.asgi."""

from __future__ import annotations

from blobstore.api.asgi import ASGIHandler, get_asgi_application

__all__ = ["ASGIHandler", "get_asgi_application"]
