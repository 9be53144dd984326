"""URLs of the host site: the admin, and blobstore mounted as its README says."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("blobs/", include("blobstore.urls")),
    path("", include("blobstore.contrib.proxystore.urls")),
]
