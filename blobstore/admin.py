"""Admin pages for blobs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from blobstore.models import APIToken, Blob


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


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["hint", "user", "name", "created", "revoked"]
    list_filter = [("revoked", admin.EmptyFieldListFilter)]
    search_fields = ["user__username", "name", "hint"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: APIToken | None = None) -> list[Any]:
        if obj is None:
            return ["user", "name"]
        return ["user", "name", "hint", "created", "revoked"]

    def get_readonly_fields(self, request: HttpRequest, obj: APIToken | None = None) -> list[str]:
        return [] if obj is None else ["user", "hint", "created", "revoked"]

    def save_model(self, request: HttpRequest, obj: APIToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, secret = APIToken.objects.create_token(obj.user, obj.name)
        obj.pk = token.pk
        self.message_user(
            request,
            f"The token's secret, shown this once (only its digest is stored): {secret}",
            messages.WARNING,
        )

    @admin.action(description=_("Revoke the selected tokens"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        revoked = queryset.filter(revoked=None).update(revoked=timezone.now())
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
