"""The HTTP API's routes: mount with ``path("blobs/", include("blobstore.urls"))``."""

from __future__ import annotations

from django.urls import path, register_converter
from django.urls.converters import PathConverter

from blobstore.api.views import BlobListView, BlobView

app_name = "blobstore"


class KeyConverter(PathConverter):
    """Match any key, line feeds too, so that the view refuses an invalid one with 400."""

    regex = r"[\s\S]+"  # "." in the path converter stops at a line feed: a 404


register_converter(KeyConverter, "blobkey")

urlpatterns = [
    path("", BlobListView.as_view(), name="list"),
    path("<blobkey:key>", BlobView.as_view(), name="blob"),
]
