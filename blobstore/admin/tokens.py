"""Admin pages for API tokens."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from blobstore.models import APIToken


class TokenStatusListFilter(admin.SimpleListFilter):
    """Filter tokens by whether they still work: active or revoked."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("active", _("Active")), ("revoked", _("Revoked"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[APIToken]
    ) -> QuerySet[APIToken] | None:
        if self.value() == "active":
            return queryset.filter(revoked=None)
        if self.value() == "revoked":
            return queryset.exclude(revoked=None)
        return None


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Create API tokens, showing each secret once; list and revoke them."""

    list_display = ["hint", "user", "name", "created", "revoked"]
    list_filter = [TokenStatusListFilter]
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
        # The page that follows names the token as the list does.
        obj.pk, obj.hint, obj.created = token.pk, token.hint, token.created
        request.blobstore_token_secret = secret  # type: ignore[attr-defined]  # for response_add

    def response_add(
        self, request: HttpRequest, obj: APIToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the new token's secret on this page alone: never in a message or a cookie."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": obj,
            "secret": request.blobstore_token_secret,  # type: ignore[attr-defined]
            "title": gettext("API token created"),
        }
        response = TemplateResponse(request, "admin/blobstore/apitoken/created.html", context)
        add_never_cache_headers(response)  # the secret must not stay in any cache
        return response

    @admin.action(description=_("Revoke the selected tokens"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        active = queryset.filter(revoked=None)
        # Named by their first characters, which are no secret: the list shows them too.
        hints = ", ".join(
            f"{hint}…" for hint in active.order_by("hint").values_list("hint", flat=True)
        )
        revoked = active.update(revoked=timezone.now())
        if not revoked:
            self.message_user(
                request, gettext("The selected tokens were revoked already."), messages.WARNING
            )
            return
        message = ngettext(
            "Revoked the token %(hints)s: programs that send it are refused from now on.",
            "Revoked %(count)d tokens, %(hints)s: programs that send them are refused from now on.",
            revoked,
        )
        self.message_user(request, message % {"count": revoked, "hints": hints}, messages.SUCCESS)
