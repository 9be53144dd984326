"""A worker process for tests/test_processes.py.

    python -m tests.writer write BACKEND WORKER COUNT START_AT
    python -m tests.writer dump BACKEND

BACKEND is ``sqlite:PATH`` for SQLiteStorage, or ``orm`` for ORMStorage on the
database that DATABASE_URL names (with the demo site's settings). ``write``
waits until START_AT (a Unix time), so that every worker writes at once, then
sets COUNT keys of its own and, between them, one key that every worker sets.
``dump`` prints every key with the SHA-256 of its blob, as JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

from blobstore.storage import ListingStorage

SHARED_KEY = "shared"


def blob_for(worker: int, number: int) -> bytes:
    """Return the blob that worker writes in its number-th step: 1-8 KiB, self-describing."""
    seed = f"{worker}:{number}:".encode()
    return (seed * (1024 * (1 + number % 8) // len(seed) + 1))[: 1024 * (1 + number % 8)]


def open_storage(backend: str) -> ListingStorage:
    if backend.startswith("sqlite:"):
        from blobstore.storage import SQLiteStorage

        return SQLiteStorage(backend.removeprefix("sqlite:"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from blobstore.storage import ORMStorage

    return ORMStorage()


async def write(storage: ListingStorage, worker: int, count: int, start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    for number in range(count):
        await storage.set(f"worker-{worker}/{number:05}", blob_for(worker, number))
        await storage.set(SHARED_KEY, blob_for(worker, number))


async def dump(storage: ListingStorage) -> None:
    digests = {}
    after = ""
    while page := await storage.list_blobs(after=after):
        for info in page:
            blob = await storage.get(info.key)
            assert blob is not None
            digests[info.key] = hashlib.sha256(blob).hexdigest()
        after = page[-1].key
    print(json.dumps(digests))


async def main(command: str, backend: str, *arguments: str) -> None:
    storage = open_storage(backend)
    try:
        if command == "write":
            worker, count, start_at = int(arguments[0]), int(arguments[1]), float(arguments[2])
            await write(storage, worker, count, start_at)
        else:
            await dump(storage)
    finally:
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
