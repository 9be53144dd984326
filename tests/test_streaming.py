"""The streaming extension (stream, write), proved for every backend by one mixin.

ORMStorage also gets tests of its chunked layout: versions swapped whole
under concurrent readers and writers, cut-off uploads, abandoned chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.test import SimpleTestCase, TestCase, TransactionTestCase, override_settings

from blobstore.exceptions import ObjectSizeExceededError
from blobstore.models import Blob, BlobChunk
from blobstore.storage import (
    BlobStream,
    DictStorage,
    ORMStorage,
    SQLiteStorage,
    StreamingStorage,
)
from blobstore.storage.chunked import CHUNK_SIZE

if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object

AnyStorage = DictStorage | SQLiteStorage | ORMStorage
ROOT = Path(__file__).resolve().parent.parent

# Crosses the ORM's chunk boundaries at odd places.
LARGE_SIZE = 3 * CHUNK_SIZE + 12345


async def chunked(data: bytes, *sizes: int) -> AsyncIterator[bytes | bytearray | memoryview]:
    """Yield data in pieces of the given sizes, cycling, in all three bytes-like types."""
    view, offset, turn = memoryview(data), 0, 0
    while offset < len(data) or turn == 0:
        size = sizes[turn % len(sizes)]
        piece = view[offset : offset + size]
        yield (bytes(piece), bytearray(piece), piece)[turn % 3]
        offset += size
        turn += 1


async def failing_after(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    yield data
    raise error


class StreamingTests(TestCaseMixin):
    """Every rule of the streaming extension; a subclass says how to make the backend."""

    storage: AnyStorage

    def make_storage(self, **options: Any) -> AnyStorage:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.storage = self.make_storage()
        self.addCleanup(async_to_sync(self.storage.close))
        self.large = os.urandom(LARGE_SIZE)

    async def read(self, stream: BlobStream | None) -> bytes:
        assert stream is not None
        async with stream:
            return await stream.read()

    def test_is_a_streaming_storage(self) -> None:
        self.assertIsInstance(self.storage, StreamingStorage)

    async def test_stream_whole_blob(self) -> None:
        await self.storage.set("k", self.large)
        stream = await self.storage.stream("k")
        assert stream is not None
        self.assertEqual((stream.start, stream.stop, stream.length), (0, LARGE_SIZE, LARGE_SIZE))
        self.assertEqual(stream.info.sha256, hashlib.sha256(self.large).hexdigest())
        async with stream:
            chunks = [chunk async for chunk in stream]
        self.assertTrue(all(type(chunk) is bytes for chunk in chunks))
        self.assertLessEqual(max(map(len, chunks)), CHUNK_SIZE)
        self.assertEqual(b"".join(chunks), self.large)

    async def test_stream_ranges(self) -> None:
        await self.storage.set("k", self.large)
        size = LARGE_SIZE
        for start, stop in [
            (0, 1),
            (5, 100),
            (CHUNK_SIZE - 1, CHUNK_SIZE + 1),
            (CHUNK_SIZE, 2 * CHUNK_SIZE),
            (2 * CHUNK_SIZE + 7, size - 3),
            (size - 1, None),
            (size, None),
            (10, size + 1000),
            (size + 5, None),
        ]:
            with self.subTest(start=start, stop=stop):
                stream = await self.storage.stream("k", start=start, stop=stop)
                expected = self.large[start:stop]
                self.assertEqual(await self.read(stream), expected)

    async def test_stream_small_and_empty_blobs(self) -> None:
        for blob in (b"", b"x", b"hello"):
            await self.storage.set("k", blob)
            self.assertEqual(await self.read(await self.storage.stream("k")), blob)
            self.assertEqual(await self.read(await self.storage.stream("k", start=1)), blob[1:])

    async def test_stream_of_absent_key_is_none(self) -> None:
        self.assertIsNone(await self.storage.stream("absent"))

    async def test_stream_bad_arguments(self) -> None:
        await self.storage.set("k", b"hello")
        cases: list[tuple[dict[str, Any], type[Exception]]] = [
            ({"start": -1}, ValueError),
            ({"stop": -1}, ValueError),
            ({"start": 3, "stop": 2}, ValueError),
            ({"start": "1"}, TypeError),
            ({"stop": 1.5}, TypeError),
            ({"start": True}, TypeError),
        ]
        for arguments, error in cases:
            with self.subTest(arguments=arguments), self.assertRaises(error):
                await self.storage.stream("k", **arguments)
        with self.assertRaises(TypeError):
            await self.storage.stream(7)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            await self.storage.stream("")

    async def test_write_from_chunks_of_any_size(self) -> None:
        for sizes in [(LARGE_SIZE,), (7, CHUNK_SIZE + 3, 0, 65536), (CHUNK_SIZE,)]:
            with self.subTest(sizes=sizes):
                info = await self.storage.write("k", chunked(self.large, *sizes))
                assert info is not None
                self.assertEqual((info.key, info.size), ("k", LARGE_SIZE))
                self.assertEqual(info.sha256, hashlib.sha256(self.large).hexdigest())
                self.assertEqual(await self.storage.get("k"), self.large)
                self.assertEqual(await self.storage.stat("k"), info)

    async def test_write_from_a_reused_buffer(self) -> None:
        # As a reader with readinto() does: one buffer, refilled for every chunk.
        size = CHUNK_SIZE + CHUNK_SIZE // 2  # whole chunks in it, and a part
        parts = [self.large[n : n + size] for n in range(0, LARGE_SIZE, size)]

        async def refilled() -> AsyncIterator[bytearray]:
            buffer = bytearray(size)
            for part in parts:
                buffer[: len(part)] = part
                yield buffer if len(part) == len(buffer) else buffer[: len(part)]

        await self.storage.write("k", refilled())
        self.assertEqual(await self.storage.get("k"), self.large)

    async def test_write_of_nothing_stores_an_empty_blob(self) -> None:
        info = await self.storage.write("k", chunked(b"", 10))
        assert info is not None
        self.assertEqual((info.size, await self.storage.get("k")), (0, b""))

    async def test_large_and_small_replace_each_other(self) -> None:
        for blob in (self.large, b"small", self.large[::-1], b"", self.large):
            await self.storage.set("k", blob)
            self.assertEqual(await self.storage.get("k"), blob)
            self.assertEqual(await self.read(await self.storage.stream("k")), blob)
        await self.storage.evict("k")
        self.assertIsNone(await self.storage.stream("k"))

    async def test_write_over_the_limit_changes_nothing(self) -> None:
        store = self.make_storage(max_object_size=2 * CHUNK_SIZE)
        self.addCleanup(async_to_sync(store.close))
        await store.set("k", b"before")
        with self.assertRaises(ObjectSizeExceededError):
            await store.write("k", chunked(self.large, 100_000))
        with self.assertRaises(ObjectSizeExceededError):
            await store.write("new", chunked(self.large, 100_000))
        self.assertEqual(await store.get("k"), b"before")
        self.assertFalse(await store.exists("new"))
        await self.assert_no_stray_chunks(store)

    async def test_failing_upload_changes_nothing(self) -> None:
        await self.storage.set("k", self.large)
        for error in (RuntimeError("the client went away"), asyncio.CancelledError()):
            with self.subTest(error=error), self.assertRaises(type(error)):
                await self.storage.write("k", failing_after(self.large[::-1], error))
        self.assertEqual(await self.storage.get("k"), self.large)
        await self.assert_no_stray_chunks(self.storage)

    async def test_bad_chunks_raise_type_error_and_change_nothing(self) -> None:
        await self.storage.set("k", b"before")

        async def with_text() -> AsyncIterator[Any]:
            yield b"x" * (2 * CHUNK_SIZE)
            yield "text"

        with self.assertRaises(TypeError):
            await self.storage.write("k", [b"not async"])  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            await self.storage.write("k", with_text())
        self.assertEqual(await self.storage.get("k"), b"before")
        await self.assert_no_stray_chunks(self.storage)

    async def test_write_conditions(self) -> None:
        first = await self.storage.write("k", chunked(self.large, CHUNK_SIZE), if_absent=True)
        assert first is not None
        self.assertIsNone(await self.storage.write("k", chunked(b"other", 2), if_absent=True))
        self.assertIsNone(await self.storage.write("k", chunked(b"other", 2), if_sha256="0" * 64))
        self.assertIsNone(
            await self.storage.write("absent", chunked(b"x", 1), if_sha256=first.sha256)
        )
        self.assertEqual(await self.storage.get("k"), self.large)
        replaced = await self.storage.write("k", chunked(b"other", 2), if_sha256=first.sha256)
        assert replaced is not None
        self.assertEqual(await self.storage.get("k"), b"other")
        self.assertFalse(await self.storage.exists("absent"))
        await self.assert_no_stray_chunks(self.storage)
        with self.assertRaises(TypeError):
            await self.storage.write("k", chunked(b"x", 1), if_sha256=b"digest")  # type: ignore[arg-type]

    async def assert_no_stray_chunks(self, store: AnyStorage) -> None:
        """Check backend-specific leftovers; nothing to check for most backends."""


class DictStreamingTests(StreamingTests, SimpleTestCase):
    def make_storage(self, **options: Any) -> AnyStorage:
        return DictStorage(**options)


class SQLiteStreamingTests(StreamingTests, SimpleTestCase):
    def make_storage(self, **options: Any) -> AnyStorage:
        directory = tempfile.mkdtemp()
        return SQLiteStorage(Path(directory) / "blobs.sqlite3", **options)

    async def assert_no_stray_chunks(self, store: AnyStorage) -> None:
        assert isinstance(store, SQLiteStorage)
        stray = "SELECT count(*) FROM chunks WHERE version NOT IN (SELECT version FROM blobs)"
        with contextlib.closing(sqlite3.connect(store.database_path)) as db:
            self.assertEqual(db.execute(stray).fetchone(), (0,))


class SQLiteMemoryStreamingTests(StreamingTests, SimpleTestCase):
    def make_storage(self, **options: Any) -> AnyStorage:
        return SQLiteStorage(**options)


class ORMStreamingTests(StreamingTests, TestCase):
    """ORMStorage inside a test transaction: chunks are read on the test's connection."""

    databases = {"default", "postgres"}
    using = "default"

    def make_storage(self, **options: Any) -> AnyStorage:
        return ORMStorage(using=self.using, **options)

    async def assert_no_stray_chunks(self, store: AnyStorage) -> None:
        named = {v async for v in Blob.objects.using(self.using).values_list("version", flat=True)}
        async for version in BlobChunk.objects.using(self.using).values_list("version", flat=True):
            self.assertIn(version, named)

    async def test_large_blob_is_a_row_and_its_chunks(self) -> None:
        await self.storage.set("k", self.large)
        row = await Blob.objects.using(self.using).aget(key="k")
        self.assertEqual((len(row.data), row.size), (CHUNK_SIZE, LARGE_SIZE))
        assert row.version is not None
        chunks = BlobChunk.objects.using(self.using).filter(version=row.version)
        self.assertEqual(await chunks.acount(), 3)
        await self.storage.set("k", b"small")
        self.assertFalse(await BlobChunk.objects.using(self.using).aexists())
        await self.storage.set("k", self.large)
        await Blob.objects.using(self.using).filter(key="k").adelete()
        self.assertFalse(await BlobChunk.objects.using(self.using).aexists())

    @override_settings(DEBUG=True)
    async def test_query_log_keeps_no_chunks(self) -> None:
        # With DEBUG on, Django logs each statement with its parameters.
        await self.storage.set("k", self.large)
        self.assertEqual(await self.storage.get("k"), self.large)
        await self.storage.set("k", b"small")
        logged = await sync_to_async(self.logged_characters)()
        self.assertLess(logged, CHUNK_SIZE)

    def logged_characters(self) -> int:
        return sum(len(query["sql"]) for query in connections[self.using].queries)


class ORMPostgreSQLStreamingTests(ORMStreamingTests):
    using = "postgres"


class IsolationTests(TestCaseMixin):
    """Committed data, read on connections of their own, as a server does."""

    storage: SQLiteStorage | ORMStorage

    def make_storage(self) -> SQLiteStorage | ORMStorage:
        raise NotImplementedError

    async def chunk_versions(self) -> set[str]:
        """Return the versions that have chunk rows."""
        raise NotImplementedError

    async def named_versions(self) -> set[str]:
        """Return the versions that blobs name."""
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.storage = self.make_storage()
        self.addCleanup(async_to_sync(self.storage.close))
        self.old = os.urandom(LARGE_SIZE)
        self.new = os.urandom(LARGE_SIZE + CHUNK_SIZE)

    async def assert_no_stray_chunks(self) -> None:
        self.assertEqual(await self.chunk_versions(), await self.named_versions())

    async def test_reader_sees_the_version_it_opened_while_it_is_replaced(self) -> None:
        await self.storage.set("k", self.old)
        stream = await self.storage.stream("k")
        assert stream is not None
        async with stream:
            received = [await anext(aiter(stream))]
            await self.storage.set("k", self.new)
            received += [chunk async for chunk in stream]
        self.assertEqual(b"".join(received), self.old)
        self.assertEqual(await self.storage.get("k"), self.new)
        await self.assert_no_stray_chunks()

    async def test_reader_finishes_a_blob_evicted_under_it(self) -> None:
        await self.storage.set("k", self.old)
        stream = await self.storage.stream("k", start=10)
        assert stream is not None
        async with stream:
            received = [await anext(aiter(stream))]
            await self.storage.evict("k")
            received += [chunk async for chunk in stream]
        self.assertEqual(b"".join(received), self.old[10:])
        self.assertIsNone(await self.storage.stream("k"))
        self.assertEqual(await self.chunk_versions(), set())
        await self.assert_no_stray_chunks()

    async def test_concurrent_writers_leave_one_whole_blob(self) -> None:
        blobs = [os.urandom(LARGE_SIZE // 2 + n) for n in range(4)]
        await asyncio.gather(*(self.storage.write("k", chunked(blob, 300_000)) for blob in blobs))
        self.assertIn(await self.storage.get("k"), blobs)
        await self.assert_no_stray_chunks()

    async def test_cancelled_upload_leaves_the_old_blob_and_no_chunks(self) -> None:
        await self.storage.set("k", self.old)
        gate = asyncio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            yield self.new[: 2 * CHUNK_SIZE + 5]
            gate.set()
            await asyncio.sleep(60)
            yield b"never"

        upload = asyncio.ensure_future(self.storage.write("k", stalls()))
        await gate.wait()
        await asyncio.sleep(0.2)  # let the first chunks reach the database
        upload.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await upload
        self.assertEqual(await self.storage.get("k"), self.old)
        await self.assert_no_stray_chunks()


class SQLiteIsolationTests(IsolationTests, SimpleTestCase):
    def make_storage(self) -> SQLiteStorage | ORMStorage:
        self.path = Path(tempfile.mkdtemp()) / "blobs.sqlite3"
        return SQLiteStorage(self.path, max_object_size=None)

    async def chunk_versions(self) -> set[str]:
        return {version for (version,) in self.query("SELECT version FROM chunks")}

    async def named_versions(self) -> set[str]:
        return {v for (v,) in self.query("SELECT version FROM blobs WHERE version IS NOT NULL")}

    def query(self, sql: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return db.execute(sql).fetchall()


class ORMIsolationTests(IsolationTests, TransactionTestCase):
    databases = {"default", "postgres"}
    using = "default"

    def make_storage(self) -> SQLiteStorage | ORMStorage:
        return ORMStorage(using=self.using, max_object_size=None)

    async def chunk_versions(self) -> set[str]:
        chunks = BlobChunk.objects.using(self.using).values_list("version", flat=True)
        return {str(version) async for version in chunks}

    async def named_versions(self) -> set[str]:
        blobs = Blob.objects.using(self.using).exclude(version=None)
        return {str(version) async for version in blobs.values_list("version", flat=True)}

    def test_upload_of_a_killed_process_is_purged(self) -> None:
        async_to_sync(self.storage.set)("k", self.old)
        before = async_to_sync(self.chunk_versions)()
        env = {**os.environ, "DATABASE_URL": _url(connections[self.using].settings_dict)}
        # The writer sends part of a blob, then is killed before it commits.
        subprocess.run(
            [sys.executable, "-m", "tests.killed_writer"],
            cwd=ROOT, env=env, timeout=60, check=False,
        )  # fmt: skip
        self.assertGreater(len(async_to_sync(self.chunk_versions)() - before), 0)
        self.assertEqual(async_to_sync(self.storage.get)("k"), self.old)
        # Too recent to be taken for abandoned; then purged.
        self.assertEqual(async_to_sync(self.storage.purge)(), 0)
        purged = async_to_sync(self.storage.purge)(older_than=datetime.timedelta(0))
        self.assertGreater(purged, 0)
        self.assertEqual(async_to_sync(self.chunk_versions)(), before)
        self.assertEqual(async_to_sync(self.storage.get)("k"), self.old)


class ORMPostgreSQLIsolationTests(ORMIsolationTests):
    using = "postgres"

    async def test_stream_closed_unread_releases_its_connection(self) -> None:
        await self.storage.set("k", self.old)
        for _ in range(3):
            stream = await self.storage.stream("k", start=CHUNK_SIZE + 1)
            assert stream is not None
            await stream.aclose()
        # A closed connection's server process ends a moment after the client lets go.
        for _ in range(50):
            if await sync_to_async(self.transactions_left_open)() == 0:
                break
            await asyncio.sleep(0.05)
        self.assertEqual(await sync_to_async(self.transactions_left_open)(), 0)

    def transactions_left_open(self) -> int:
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%%'"
            )
            return int(cursor.fetchone()[0])


def _url(settings: dict[str, Any]) -> str:
    if "sqlite" in settings["ENGINE"]:
        return f"sqlite:///{settings['NAME']}"
    user = settings["USER"] or "postgres"
    return f"postgres://{user}@{settings['HOST']}:{settings['PORT'] or 5432}/{settings['NAME']}"
