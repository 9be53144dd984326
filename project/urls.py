"""URLs of the blobstore demo site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index"), name="home"),
    path("admin/", admin.site.urls),
    path("blobs/", include("blobstore.urls")),
    path("", include("blobstore.contrib.proxystore.urls")),
]
