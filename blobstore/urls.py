"""The HTTP API's routes, re-exported from blobstore.api.urls: ``include("blobstore.urls")``."""

from __future__ import annotations

from blobstore.api.urls import app_name, urlpatterns

__all__ = ["app_name", "urlpatterns"]
