"""The Blob model: one row per stored blob."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from blobstore.conf import require_installed
from blobstore.storage.base import MAX_CONTENT_TYPE_LENGTH, MAX_KEY_LENGTH, OCTET_STREAM
from blobstore.storage.statement import Statement

require_installed()

TOKEN_PREFIX = "bs_"
"""Every API token secret starts so, which lets secret scanners find leaked ones."""

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


class BlobQuerySet(models.QuerySet["Blob"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the blobs and their chunks, in one transaction."""
        with transaction.atomic(using=self.db):
            # Rows first, in key order, then chunks: the order in which writers
            # lock, so that a delete and a write of one key never deadlock.
            locked = list(self.select_for_update().order_by("key").values_list("pk", "version"))
            deleted = Blob.objects.using(self.db).filter(pk__in=[pk for pk, _ in locked])
            count, per_model = models.QuerySet.delete(deleted)
            versions = [version for _, version in locked if version is not None]
            BlobChunk.objects.using(self.db).filter(version__in=versions).delete()
            return count, per_model

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class Blob(models.Model):
    """A binary blob stored under a unique key.

    ``data`` holds the first chunk; a blob larger than one chunk keeps the
    rest in :class:`BlobChunk` rows of its ``version``.
    """

    key = KeyField(_("key"), max_length=MAX_KEY_LENGTH, unique=True)
    data = models.BinaryField(_("first chunk"))
    size = models.BigIntegerField(_("size"), help_text=_("In bytes."))
    sha256 = models.CharField(_("SHA-256"), max_length=64, help_text=_("Hex digest of the data."))
    created = models.DateTimeField(_("created"))
    updated = models.DateTimeField(_("updated"), db_index=True)
    version = models.UUIDField(
        _("version"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("Names the chunk rows after the first chunk; empty when there are none."),
    )
    content_type = models.CharField(
        _("content type"), max_length=MAX_CONTENT_TYPE_LENGTH, default=OCTET_STREAM
    )
    metadata = models.JSONField(
        _("metadata"), default=dict, blank=True, help_text=_("Names and values of the user's own.")
    )
    expires = models.DateTimeField(
        _("expires"),
        null=True,
        blank=True,
        db_index=True,
        help_text=_("After this the blob is gone for every read, and purge deletes it."),
    )

    objects = BlobQuerySet.as_manager()

    class Meta:
        verbose_name = _("blob")
        verbose_name_plural = _("blobs")
        ordering = ["key"]

    def __str__(self) -> str:
        return str(self.key)

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        """Delete the blob and its chunks."""
        return (
            type(self)._default_manager.using(using or self._state.db).filter(pk=self.pk).delete()
        )


class BlobChunk(models.Model):
    """The bytes of one version of a blob after its first chunk, one chunk a row.

    Chunks are written before their blob row names their version, so a
    reader of a version never sees it half written; and a version is
    deleted in the transaction that replaces or deletes its blob.
    """

    version = models.UUIDField(_("version"))
    index = models.PositiveIntegerField(
        _("index"), help_text=_("1 for the second chunk, and so on.")
    )
    # Before data, so that SQLite finds it without reading the chunk.
    created = models.DateTimeField(_("created"), default=timezone.now)
    data = models.BinaryField(_("data"))

    class Meta:
        verbose_name = _("blob chunk")
        verbose_name_plural = _("blob chunks")
        constraints = [
            models.UniqueConstraint(fields=["version", "index"], name="blobstore_chunk_order")
        ]

    def __str__(self) -> str:
        return f"{self.version} #{self.index}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class APITokenManager(models.Manager["APIToken"]):
    def create_token(self, user: Any, name: str = "") -> tuple[APIToken, str]:
        """Create a token for user; return it with its secret, which is not stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = self.create(user=user, name=name, digest=_digest(secret), hint=secret[:12])
        return token, secret

    async def aactive_user(self, secret: str) -> Any | None:
        """Return the active user of the unrevoked token whose secret this is, or None."""
        user_model = get_user_model()
        statement, fields = self._user_statement(user_model)
        rows = await statement.read([_digest(secret)])
        if not rows:
            return None
        user = user_model.from_db(statement.using, fields, rows[0])
        # As Django's ModelBackend: a user model without is_active has only active users.
        return user if getattr(user, "is_active", True) else None

    def _user_statement(self, user_model: type[models.Model]) -> tuple[Statement, list[str]]:
        """Return the statement that selects a token's user by its digest, and its fields."""
        # Compiled once per database rather than on every request that sends a token.
        cache_key = (self.db, user_model._meta.label)
        compiled = _USER_STATEMENTS.get(cache_key)
        if compiled is None:
            fields = [field.attname for field in user_model._meta.concrete_fields]
            tokens = self.model._meta.get_field("user").related_query_name()
            query = user_model._default_manager.db_manager(self.db).filter(
                **{f"{tokens}__digest": _DIGEST_MARK, f"{tokens}__revoked": None}
            )
            statement = Statement(query.values_list(*fields), [_DIGEST_MARK], reused=True)
            compiled = _USER_STATEMENTS[cache_key] = (statement, fields)
        return compiled

    async def aheld_permissions(self, secret: str) -> set[str]:
        """Return the permissions of the user of the token whose secret this is.

        As Django's ModelBackend finds them: the user's own and their groups',
        each as ``"app_label.codename"``; for an active user who is no superuser.
        """
        digest = _digest(secret)
        rows = await self._permission_statement().read([digest, digest])
        return {f"{app_label}.{codename}" for app_label, codename in rows}

    def _permission_statement(self) -> Statement:
        """Return the statement that selects the permissions of a token's user by its digest."""
        # One statement, compiled once, where ModelBackend compiles two querysets
        # and runs each through a thread hop on every request.
        cache_key = (self.db, get_user_model()._meta.label)
        statement = _PERMISSION_STATEMENTS.get(cache_key)
        if statement is None:
            # Here: a site may run blobstore without django.contrib.auth.
            from django.contrib.auth.models import Permission

            tokens = self.model._meta.get_field("user").related_query_name()
            query = (
                Permission.objects.db_manager(self.db)
                .filter(
                    Q(**{f"user__{tokens}__digest": _DIGEST_MARK})
                    | Q(**{f"group__user__{tokens}__digest": _GROUP_DIGEST_MARK})
                )
                .values_list("content_type__app_label", "codename")
                .order_by()  # Permission's ordering would add its columns to DISTINCT
                .distinct()
            )
            statement = Statement(query, [_DIGEST_MARK, _GROUP_DIGEST_MARK], reused=True)
            _PERMISSION_STATEMENTS[cache_key] = statement
        return statement


_DIGEST_MARK = "\x00blobstore digest\x00"
_GROUP_DIGEST_MARK = "\x00blobstore digest, of a group member\x00"
_USER_STATEMENTS: dict[tuple[str, str], tuple[Statement, list[str]]] = {}
_PERMISSION_STATEMENTS: dict[tuple[str, str], Statement] = {}


class APIToken(models.Model):
    """A secret that lets a program act as a user: ``Authorization: Bearer <secret>``.

    Only the SHA-256 digest of the secret is stored; the secret is shown once,
    when the token is made.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blobstore_tokens"
    )
    name = models.CharField(_("name"), max_length=100, blank=True)
    digest = models.CharField(_("SHA-256 of the secret"), max_length=64, unique=True)
    hint = models.CharField(_("first characters"), max_length=12)
    created = models.DateTimeField(_("created"), auto_now_add=True)
    revoked = models.DateTimeField(_("revoked"), null=True, blank=True)

    objects = APITokenManager()

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return f"{self.hint}… ({self.user})"
