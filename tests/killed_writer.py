"""Start a large upload to ORMStorage on DATABASE_URL's database, and die in the middle of it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import django


async def upload_and_die() -> None:
    from blobstore.storage import ORMStorage
    from blobstore.storage.chunked import CHUNK_SIZE

    async def chunks() -> AsyncIterator[bytes]:
        yield os.urandom(3 * CHUNK_SIZE)
        await asyncio.sleep(0.5)  # the writer has stored the whole chunks by now
        os.kill(os.getpid(), signal.SIGKILL)
        yield b""

    await ORMStorage(max_object_size=None).write("k", chunks())


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    asyncio.run(upload_and_die())
