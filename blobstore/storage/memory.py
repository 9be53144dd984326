"""A storage that keeps blobs in a dict in the process."""

from __future__ import annotations

import datetime
import hashlib
import heapq
import io
import time
from collections.abc import AsyncIterable, Mapping

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_KEY_LENGTH,
    PLAIN,
    Attributes,
    BaseStorage,
    BlobInfo,
    BytesLike,
    Upload,
    validate_digest,
    validate_item,
    validate_key,
    validate_listing,
)


class DictStorage(BaseStorage):
    """Keep blobs in a dict: fast, private to the process, gone on ``close()``."""

    def __init__(self, *, max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE) -> None:
        super().__init__(max_object_size=max_object_size)
        self._data: dict[str, bytes] = {}
        # When each blob was set, and its digest once asked for; kept apart
        # from _data so that get() stays a single dict lookup, and as plain
        # floats and strs, which the garbage collector does not track.
        self._updated: dict[str, float] = {}
        self._created: dict[str, float] = {}
        self._digests: dict[str, str] = {}
        # Only blobs written with a content type, metadata or expiry have an entry.
        self._attributes: dict[str, Attributes] = {}

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        try:
            blob = self._data[key]
        except (KeyError, TypeError):
            # Only valid keys are stored, so a hit needs no check: checking on
            # a miss keeps get() as fast as a bare dict.
            validate_key(key)
            return default
        if self._attributes and self._expired(key):
            return default
        return blob

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there."""
        limit = self.max_object_size
        # The common case, checked inline: a call to a validator would cost
        # as much as the store itself. validate_item() decides the rest.
        if (
            type(key) is str
            and type(blob) is bytes
            and 0 < len(key) <= MAX_KEY_LENGTH
            and key.isascii()
            and key.isprintable()
            and (limit is None or len(blob) <= limit)
        ):
            self._data[key] = blob
            now = self._updated[key] = time.time()
            self._created.setdefault(key, now)
            if self._digests:
                self._digests.pop(key, None)
            if self._attributes:
                self._attributes.pop(key, None)
        else:
            self._store(key, validate_item(key, blob, limit), PLAIN)

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        try:
            if key in self._data:
                return not (self._attributes and self._expired(key))
        except TypeError:
            pass
        validate_key(key)
        return False

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        try:
            del self._data[key]
        except (KeyError, TypeError):
            validate_key(key)
        else:
            del self._updated[key]
            del self._created[key]
            self._digests.pop(key, None)
            self._attributes.pop(key, None)

    async def close(self) -> None:
        """Forget every blob, as ProxyStore's DictStorage does."""
        for data in (self._data, self._updated, self._created, self._digests, self._attributes):
            data.clear()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        keys = (
            key
            for key in self._data
            if key > after and key.startswith(prefix) and not self._expired(key)
        )
        return [self._info(key) for key in heapq.nsmallest(limit, keys)]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        return self._info(key) if self._readable(key) else None

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of the blob stored under key, or None."""
        validate_key(key)
        return (self._info(key), self._data[key]) if self._readable(key) else None

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        data = validate_item(key, blob, self.max_object_size)
        if self._readable(key):
            return False
        self._store(key, data, PLAIN)
        return True

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        data = validate_item(key, blob, self.max_object_size)
        validate_digest(sha256)
        if not self._readable(key) or self._info(key).sha256 != sha256:
            return False
        self._store(key, data, PLAIN)
        return True

    async def write(
        self,
        key: str,
        chunks: AsyncIterable[BytesLike],
        *,
        if_absent: bool = False,
        if_sha256: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires: datetime.datetime | None = None,
    ) -> BlobInfo | None:
        """Store the concatenated chunks under key; return the new record, or None."""
        validate_key(key)
        if if_sha256 is not None:
            validate_digest(if_sha256)
        attributes = Attributes.validated(content_type, metadata, expires)
        upload = Upload(chunks, self.max_object_size)
        buffer = io.BytesIO()
        async for chunk in upload.checked():
            buffer.write(chunk)
        # No await from the check to the store: nothing can come between them.
        if if_absent and self._readable(key):
            return None
        if if_sha256 is not None and (
            not self._readable(key) or self._info(key).sha256 != if_sha256
        ):
            return None
        self._store(key, buffer.getvalue(), attributes)
        return self._info(key)

    async def purge(
        self, *, older_than: datetime.timedelta = datetime.timedelta(0), batches: int | None = None
    ) -> int:
        """Delete the expired blobs; return how many."""
        expired = [key for key in self._attributes if self._expired(key)]
        for key in expired:
            await self.evict(key)
        return len(expired)

    def _store(self, key: str, data: bytes | memoryview, attributes: Attributes) -> None:
        if not self._readable(key):
            self._created.pop(key, None)  # an expired blob's key starts again
        # A view may belong to a buffer that the caller changes later: keep a copy.
        self._data[key] = data if type(data) is bytes else bytes(data)
        now = self._updated[key] = time.time()
        self._created.setdefault(key, now)
        self._digests.pop(key, None)
        if attributes == PLAIN:
            self._attributes.pop(key, None)
        else:
            self._attributes[key] = attributes

    def _readable(self, key: str) -> bool:
        return key in self._data and not self._expired(key)

    def _expired(self, key: str) -> bool:
        attributes = self._attributes.get(key)
        return (
            attributes is not None
            and attributes.expires is not None
            and attributes.expires.timestamp() <= time.time()
        )

    def _info(self, key: str) -> BlobInfo:
        data = self._data[key]
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = hashlib.sha256(data).hexdigest()
        attributes = self._attributes.get(key, PLAIN)
        return BlobInfo(
            key,
            len(data),
            _time(self._updated[key]),
            digest,
            attributes.content_type,
            attributes.metadata,
            _time(self._created[key]),
            attributes.expires,
        )


def _time(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
