"""A storage that keeps blobs in the Blob table through Django's async ORM."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.utils import timezone

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    BaseStorage,
    BlobInfo,
    BytesLike,
    prefix_end,
    validate_digest,
    validate_item,
    validate_key,
    validate_listing,
)

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from blobstore.models import Blob

_REPLACED_FIELDS = ["data", "size", "sha256", "updated"]
_INFO_FIELDS = ["key", "size", "updated", "sha256"]


class ORMStorage(BaseStorage):
    """Keep blobs in :class:`blobstore.models.Blob` rows on the database ``using`` names.

    Connections belong to Django, which opens and closes them; ``close()``
    has nothing of its own to release.
    """

    def __init__(
        self,
        *,
        using: str = DEFAULT_DB_ALIAS,
        max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE,
    ) -> None:
        super().__init__(max_object_size=max_object_size)
        if not isinstance(using, str):
            raise TypeError(f"using must be a database alias (a str), not {type(using).__name__}.")
        self.using = using

    @property
    def blobs(self) -> QuerySet[Blob]:
        """Return all Blob rows of this storage's database."""
        # Imported here so that blobstore.storage can be imported before the
        # app registry is ready, e.g. from a settings module.
        from blobstore.models import Blob

        return Blob.objects.using(self.using)

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        validate_key(key)
        data = await self.blobs.filter(key=key).values_list("data", flat=True).afirst()
        if data is None:
            return default
        return data if type(data) is bytes else bytes(data)

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there, in one statement."""
        row = self._row(key, validate_item(key, blob, self.max_object_size))
        # INSERT ... ON CONFLICT DO UPDATE: atomic on SQLite and PostgreSQL, so
        # two writers of one key never meet an IntegrityError.
        await self.blobs.abulk_create(
            [row], update_conflicts=True, unique_fields=["key"], update_fields=_REPLACED_FIELDS
        )

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        validate_key(key)
        return await self.blobs.filter(key=key).aexists()

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        validate_key(key)
        await self.blobs.filter(key=key).adelete()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        # A key range, not __startswith: SQLite's LIKE ignores case.
        rows = self.blobs.filter(key__gte=prefix, key__gt=after)
        end = prefix_end(prefix)
        if end is not None:
            rows = rows.filter(key__lt=end)
        records = rows.order_by("key").values_list(*_INFO_FIELDS)[:limit]
        return [BlobInfo(*record) async for record in records]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        record = await self.blobs.filter(key=key).values_list(*_INFO_FIELDS).afirst()
        return None if record is None else BlobInfo(*record)

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of the blob stored under key, or None."""
        validate_key(key)
        record = await self.blobs.filter(key=key).values_list(*_INFO_FIELDS, "data").afirst()
        if record is None:
            return None
        *info, data = record
        return BlobInfo(*info), data if type(data) is bytes else bytes(data)

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        row = self._row(key, validate_item(key, blob, self.max_object_size))
        try:
            await sync_to_async(self._insert)(row)
        except IntegrityError:
            return False
        return True

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        row = self._row(key, validate_item(key, blob, self.max_object_size))
        current = self.blobs.filter(key=key, sha256=validate_digest(sha256))
        changes = {field: getattr(row, field) for field in _REPLACED_FIELDS}
        return await current.aupdate(**changes) > 0

    def _row(self, key: str, data: bytes | memoryview) -> Blob:
        now = timezone.now()
        return self.blobs.model(
            key=key,
            data=data,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created=now,
            updated=now,
        )

    def _insert(self, row: Blob) -> None:
        # A savepoint of its own, so that a conflict leaves the caller's transaction usable.
        with transaction.atomic(using=self.using):
            row.save(using=self.using, force_insert=True)
