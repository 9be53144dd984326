"""Admin pages for blobs."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from blobstore.models import Blob


@admin.register(Blob)
class BlobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["key", "size", "sha256", "updated"]
    search_fields = ["key"]
    list_filter = ["updated"]
    readonly_fields = ["key", "size", "sha256", "created", "updated"]
    exclude = ["data"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Blob]:
        # A changelist of large blobs must not read them.
        return super().get_queryset(request).defer("data")
