"""Start a large upload to ORMStorage on DATABASE_URL's database, and die in the middle of it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import django


async def upload_and_die() -> None:
    from blobstore.models import BlobChunk
    from blobstore.storage import ORMStorage
    from blobstore.storage.chunked import CHUNK_SIZE

    before = await BlobChunk.objects.acount()

    async def chunks() -> AsyncIterator[bytes]:
        yield os.urandom(3 * CHUNK_SIZE)
        # Die once a chunk is stored, however long a loaded machine takes (at most 30 s).
        for _ in range(600):
            if await BlobChunk.objects.acount() > before:
                break
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
        yield b""

    await ORMStorage(max_object_size=None).write("k", chunks())


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    asyncio.run(upload_and_die())
