"""The demo site's settings for benchmarks: DEBUG off, backend from BLOBSTORE_BENCH_BACKEND."""

from __future__ import annotations

import os
from typing import Any

from project.settings import *  # noqa: F403
from project.settings import VAR_DIR

DEBUG = False  # DEBUG keeps every query in memory

_BACKENDS: dict[str, dict[str, Any]] = {
    "dict": {"BACKEND": "blobstore.storage.DictStorage"},
    "sqlite": {
        "BACKEND": "blobstore.storage.SQLiteStorage",
        "OPTIONS": {"database_path": str(VAR_DIR / "bench-blobs.sqlite3")},
    },
    "orm": {"BACKEND": "blobstore.storage.ORMStorage"},
}
_storage = _BACKENDS[os.environ.get("BLOBSTORE_BENCH_BACKEND", "orm")]
BLOBSTORE_STORAGES = {
    "default": {**_storage, "OPTIONS": {**_storage.get("OPTIONS", {}), "max_object_size": None}}
}

# Each benchmark server is an endpoint of its own, whatever their SECRET_KEY.
BLOBSTORE_PROXYSTORE = {"UUID": os.environ.get("BLOBSTORE_BENCH_UUID")}
