"""ProxyStore's endpoint routes.

Mount with ``path("", include("blobstore.contrib.proxystore.urls"))``.
"""

from __future__ import annotations

from django.urls import path

from blobstore.contrib.proxystore import views

app_name = "proxystore"

urlpatterns = [
    path("endpoint", views.endpoint, name="endpoint"),
    path("exists", views.exists, name="exists"),
    path("get", views.get, name="get"),
    path("set", views.set, name="set"),
    path("evict", views.evict, name="evict"),
]
