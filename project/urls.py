"""URLs of the blobstore demo site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("documents/", views.documents, name="documents"),
    path("admin/", admin.site.urls),
    path("blobs/", include("blobstore.urls")),
    path("", include("blobstore.contrib.proxystore.urls")),
]
