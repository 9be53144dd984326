"""The Blob model: one row per stored blob."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.translation import gettext_lazy as _

from blobstore.storage.base import MAX_KEY_LENGTH

# Keys sort and match prefixes by code point on every database; PostgreSQL's
# default collation would sort by language rules and ignore the index for
# prefix searches.
_BINARY_COLLATIONS = {"postgresql": "C"}


class KeyField(models.CharField):  # type: ignore[type-arg]
    """A CharField that compares by code point on every database."""

    def db_parameters(self, connection: BaseDatabaseWrapper) -> dict[str, Any]:
        params = super().db_parameters(connection)
        params["collation"] = self.db_collation or _BINARY_COLLATIONS.get(connection.vendor)
        return params


class Blob(models.Model):
    """A binary blob stored under a unique key."""

    key = KeyField(_("key"), max_length=MAX_KEY_LENGTH, unique=True)
    data = models.BinaryField(_("data"))
    size = models.BigIntegerField(_("size"), help_text=_("In bytes."))
    sha256 = models.CharField(_("SHA-256"), max_length=64, help_text=_("Hex digest of the data."))
    created = models.DateTimeField(_("created"))
    updated = models.DateTimeField(_("updated"), db_index=True)

    class Meta:
        verbose_name = _("blob")
        verbose_name_plural = _("blobs")
        ordering = ["key"]

    def __str__(self) -> str:
        return str(self.key)
