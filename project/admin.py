"""The demo model in the admin: its upload widgets store files in blobstore."""

from __future__ import annotations

from django.contrib import admin

from project.models import Document


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "file", "cover", "uploaded"]
    search_fields = ["title"]
