"""A storage that keeps blobs in a dict in the process."""

from __future__ import annotations

import datetime
import heapq
import time

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    BaseStorage,
    BlobInfo,
    BytesLike,
    validate_item,
    validate_key,
    validate_listing,
)


class DictStorage(BaseStorage):
    """Keep blobs in a dict: fast, private to the process, gone on ``close()``."""

    def __init__(self, *, max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE) -> None:
        super().__init__(max_object_size=max_object_size)
        self._data: dict[str, bytes] = {}
        # Kept apart from _data so that get() stays a single dict lookup.
        self._updated: dict[str, float] = {}

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
        data = validate_item(key, blob, self.max_object_size)
        # A view may belong to a buffer that the caller changes later: keep a copy.
        self._data[key] = data if type(data) is bytes else bytes(data)
        self._updated[key] = time.time()

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

    async def close(self) -> None:
        """Forget every blob, as ProxyStore's DictStorage does."""
        self._data.clear()
        self._updated.clear()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        keys = heapq.nsmallest(limit, (k for k in self._data if k > after and k.startswith(prefix)))
        return [
            BlobInfo(
                key=key,
                size=len(self._data[key]),
                updated=datetime.datetime.fromtimestamp(self._updated[key], datetime.UTC),
            )
            for key in keys
        ]
