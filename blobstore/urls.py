"""The HTTP API's routes: mount with ``path("blobs/", include("blobstore.urls"))``."""

from __future__ import annotations

from django.urls import path

from blobstore.views import BlobListView, BlobView

app_name = "blobstore"

urlpatterns = [
    path("", BlobListView.as_view(), name="list"),
    path("<path:key>", BlobView.as_view(), name="blob"),
]
