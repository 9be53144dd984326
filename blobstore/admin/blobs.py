"""Admin pages for blobs."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from blobstore.admin.changelist import (
    BlobPaginator,
    FolderListFilter,
    SizeListFilter,
    folder_breadcrumbs,
    is_folder,
)
from blobstore.admin.downloads import (
    blob_storage,
    download_response,
    image_response,
    open_image,
    read_head,
    upload_chunks,
    zip_response,
)
from blobstore.admin.forms import BlobAddForm, BlobChangeForm, human_size, size_in_bytes
from blobstore.admin.previews import PREVIEW_BYTES, make_preview
from blobstore.models import Blob
from blobstore.storage.base import Attributes, prefix_end

METADATA_FIELDS = [
    *("id", "key", "size", "sha256", "created", "updated"),
    *("content_type", "metadata", "expires"),
]
"""The columns of a Blob row that admin pages read: all but the data."""


@admin.register(Blob)
class BlobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Browse blobs without loading their data; add, replace and delete them through storage."""

    list_display = ["key", "human_size", "short_digest", "updated", "content_type"]
    list_filter = [FolderListFilter, SizeListFilter, "updated"]
    search_fields = ["key"]  # matched as a prefix, by get_search_results
    search_help_text = _("Shows the blobs whose keys start with this text (case-sensitive).")
    paginator = BlobPaginator
    show_full_result_count = False  # a second count of the whole table per page view
    actions = ["download_zip"]
    form = BlobChangeForm
    add_form = BlobAddForm
    readonly_fields = ["key", "size_in_bytes", "sha256", "created", "updated", "preview"]
    fieldsets = [
        (None, {"fields": ["key", "size_in_bytes", "sha256", "created", "updated", "preview"]}),
    ]
    attributes_fieldset = (_("Attributes"), {"fields": ["content_type", "metadata", "expires"]})
    replace_fieldset = (_("Replace"), {"fields": ["file"]})
    add_fieldsets = [(None, {"fields": ["file", "key", "overwrite"]}), attributes_fieldset]
    delete_confirmation_max_display = 100  # Django 6.1 and later: "delete selected" of many

    def get_queryset(self, request: HttpRequest) -> QuerySet[Blob]:
        # Blob data can be large: no admin page reads it from a row.
        return super().get_queryset(request).only(*METADATA_FIELDS)

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Paginator[Any]:
        """Page blobs with their totals, and other rows (the history's log entries) plainly."""
        paginator = self.paginator if queryset.model is Blob else Paginator
        return paginator(queryset, per_page, orphans, allow_empty_first_page)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Blob], search_term: str
    ) -> tuple[QuerySet[Blob], bool]:
        """Find the keys that start with search_term, as a range scan of the key index."""
        if not search_term:
            return queryset, False
        blobs = queryset.filter(key__gte=search_term)
        end = prefix_end(search_term)
        return (blobs if end is None else blobs.filter(key__lt=end)), False

    @admin.display(description=_("size"), ordering="size")
    def human_size(self, blob: Blob) -> str:
        return human_size(blob.size)

    @admin.display(description=_("SHA-256"), ordering="sha256")
    def short_digest(self, blob: Blob) -> str:
        return format_html('<code title="{}">{}…</code>', blob.sha256, blob.sha256[:12])

    @admin.display(description=_("size"))
    def size_in_bytes(self, blob: Blob) -> str:
        return size_in_bytes(blob.size)

    @admin.display(description=_("preview"))
    def preview(self, blob: Blob) -> str:
        """Show the blob as an image, as escaped text or as a hex dump, whichever it is."""
        head = async_to_sync(read_head)(blob_storage(blob._state.db), blob.key, PREVIEW_BYTES)
        if head is None:  # deleted since the page was asked for
            return self.get_empty_value_display()
        info, data = head
        preview = make_preview(data, info.size)
        context = {
            "blob": blob,
            "preview": preview,
            "blob_size": human_size(preview.size),
            "shown_size": human_size(preview.shown),
            "image_url": self._url("image", blob),
        }
        return render_to_string("admin/blobstore/blob/preview.html", context)

    def get_fieldsets(self, request: HttpRequest, obj: Blob | None = None) -> Any:
        if obj is None:
            return self.add_fieldsets
        if self.has_change_permission(request, obj):
            return [*self.fieldsets, self.attributes_fieldset, self.replace_fieldset]
        return [*self.fieldsets, self.attributes_fieldset]

    def get_readonly_fields(self, request: HttpRequest, obj: Blob | None = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_form(
        self, request: HttpRequest, obj: Blob | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs = {"form": self.add_form, **kwargs}
        return super().get_form(request, obj, change, **kwargs)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        folder = request.GET.get(FolderListFilter.parameter_name, "")
        crumbs = folder_breadcrumbs(folder) if folder and is_folder(folder) else []
        context = {
            "folder_crumbs": [
                (name, f"?{urlencode({'folder': path})}" if path else "?") for name, path in crumbs
            ],
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def save_model(self, request: HttpRequest, obj: Blob, form: Any, change: bool) -> None:
        """Store the uploaded file, if any, under the blob's key, or its changed attributes."""
        upload = form.cleaned_data.get("file")
        attributes = form.attributes
        if upload is None:  # a change form saved without a file keeps the data
            if form.has_changed():
                self._change_attributes(obj, attributes)
            return
        store = form.storage
        async_to_sync(store.write)(
            obj.key,
            upload_chunks(upload),
            content_type=attributes.content_type,
            metadata=attributes.metadata,
            expires=attributes.expires,
        )
        if not change:  # the admin goes on to the new blob's page
            blobs = self.get_queryset(request).using(store.using)
            obj.pk = blobs.values_list("pk", flat=True).get(key=obj.key)

    def _change_attributes(self, obj: Blob, attributes: Attributes) -> None:
        # Only the version the form showed: one replaced meanwhile keeps its own.
        Blob.objects.using(obj._state.db).filter(pk=obj.pk, sha256=obj.sha256).update(
            content_type=attributes.content_type,
            metadata=attributes.metadata,
            expires=attributes.expires,
            updated=timezone.now(),
        )

    def delete_model(self, request: HttpRequest, obj: Blob) -> None:
        async_to_sync(blob_storage(obj._state.db).evict)(obj.key)

    @admin.action(description=_("Download selected blobs as a zip"), permissions=["view"])
    def download_zip(self, request: HttpRequest, queryset: QuerySet[Blob]) -> HttpResponseBase:
        keys = list(queryset.order_by("key").values_list("key", flat=True))
        return zip_response(blob_storage(queryset.db), keys)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name=f"{name}_download",
            ),
            path(
                "<path:object_id>/image/",
                self.admin_site.admin_view(self.image_view),
                name=f"{name}_image",
            ),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """Send the blob as an attachment, streamed."""
        blob = self._viewable_blob(request, object_id)
        stream = async_to_sync(blob_storage(blob._state.db).stream)(blob.key)
        if stream is None:
            raise Http404(gettext("The blob is gone."))
        return download_response(stream)

    def image_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """Send the blob for an ``<img>`` if it is a PNG, JPEG, GIF or WebP image."""
        blob = self._viewable_blob(request, object_id)
        image = async_to_sync(open_image)(blob_storage(blob._state.db), blob.key)
        if image is None:
            raise Http404(gettext("The blob is not an image that the admin shows."))
        return image_response(*image)

    def _viewable_blob(self, request: HttpRequest, object_id: str) -> Blob:
        if not self.has_view_permission(request):
            raise PermissionDenied
        blob: Blob | None = self.get_object(request, unquote(object_id))
        if blob is None:
            raise Http404(gettext("No such blob."))
        return blob

    def _url(self, view: str, blob: Blob) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}",
            args=[quote(blob.pk)],
            current_app=self.admin_site.name,
        )
