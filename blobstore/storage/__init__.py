"""ProxyStore's endpoint storage protocol and blobstore's backends for it."""

from __future__ import annotations

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    MAX_KEY_LENGTH,
    BaseStorage,
    BlobInfo,
    BlobStorage,
    BlobStream,
    BytesLike,
    ListingStorage,
    Storage,
    StreamingStorage,
)
from blobstore.storage.handler import StorageHandler, storages
from blobstore.storage.memory import DictStorage
from blobstore.storage.orm import ORMStorage
from blobstore.storage.sqlite import SQLiteStorage

__all__ = [
    "DEFAULT_MAX_OBJECT_SIZE",
    "MAX_KEY_LENGTH",
    "BaseStorage",
    "BlobInfo",
    "BlobStorage",
    "BlobStream",
    "BytesLike",
    "DictStorage",
    "ListingStorage",
    "ORMStorage",
    "SQLiteStorage",
    "Storage",
    "StorageHandler",
    "StreamingStorage",
    "storages",
]
