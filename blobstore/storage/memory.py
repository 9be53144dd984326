"""A storage that keeps blobs in a dict in the process."""

from __future__ import annotations

import datetime
import hashlib
import heapq
import time

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_KEY_LENGTH,
    BaseStorage,
    BlobInfo,
    BytesLike,
    GatheredStreams,
    validate_digest,
    validate_item,
    validate_key,
    validate_listing,
)


class DictStorage(GatheredStreams, BaseStorage):
    """Keep blobs in a dict: fast, private to the process, gone on ``close()``."""

    def __init__(self, *, max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE) -> None:
        super().__init__(max_object_size=max_object_size)
        self._data: dict[str, bytes] = {}
        # When each blob was set, and its digest once asked for; kept apart
        # from _data so that get() stays a single dict lookup, and as plain
        # floats and strs, which the garbage collector does not track.
        self._updated: dict[str, float] = {}
        self._digests: dict[str, str] = {}

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        try:
            return self._data[key]
        except (KeyError, TypeError):
            # Only valid keys are stored, so a hit needs no check: checking on
            # a miss keeps get() as fast as a bare dict.
            validate_key(key)
            return default

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
            self._updated[key] = time.time()
            if self._digests:
                self._digests.pop(key, None)
        else:
            self._store(key, validate_item(key, blob, limit))

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        try:
            if key in self._data:
                return True
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
            if self._digests:
                self._digests.pop(key, None)

    async def close(self) -> None:
        """Forget every blob, as ProxyStore's DictStorage does."""
        self._data.clear()
        self._updated.clear()
        self._digests.clear()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        keys = heapq.nsmallest(limit, (k for k in self._data if k > after and k.startswith(prefix)))
        return [self._info(key) for key in keys]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        return self._info(key) if key in self._data else None

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of the blob stored under key, or None."""
        validate_key(key)
        return (self._info(key), self._data[key]) if key in self._data else None

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        data = validate_item(key, blob, self.max_object_size)
        if key in self._data:
            return False
        self._store(key, data)
        return True

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        data = validate_item(key, blob, self.max_object_size)
        validate_digest(sha256)
        if key not in self._data or self._info(key).sha256 != sha256:
            return False
        self._store(key, data)
        return True

    def _store(self, key: str, data: bytes | memoryview) -> None:
        # A view may belong to a buffer that the caller changes later: keep a copy.
        self._data[key] = data if type(data) is bytes else bytes(data)
        self._updated[key] = time.time()
        self._digests.pop(key, None)

    def _info(self, key: str) -> BlobInfo:
        data = self._data[key]
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = hashlib.sha256(data).hexdigest()
        updated = datetime.datetime.fromtimestamp(self._updated[key], datetime.UTC)
        return BlobInfo(key, len(data), updated, digest)
