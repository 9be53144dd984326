"""Content types, metadata, expiry, creation times and folders, proved for every backend."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from asgiref.sync import async_to_sync
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import SimpleTestCase, TestCase, TransactionTestCase, override_settings
from django.utils import timezone

from blobstore.storage import BlobInfo, DictStorage, ORMStorage, SQLiteStorage
from blobstore.storage.base import MAX_METADATA_SIZE, OCTET_STREAM
from tests.test_streaming import chunked

if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object

AnyStorage = DictStorage | SQLiteStorage | ORMStorage
LARGE = bytes(range(256)) * 4096 * 3  # three chunks


def soon() -> datetime.datetime:
    """Return a moment an hour from now, which later() has passed."""
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)


@contextlib.contextmanager
def later() -> Iterator[None]:
    """Run the block two hours ahead on the clocks that the storages read.

    Expiry is then decided by the clock, not by how long a loaded machine
    took to write the blob (a real expiry a moment ahead made tests flaky).
    """
    real_time, real_now = time.time, timezone.now
    ahead = datetime.timedelta(hours=2)
    with (
        mock.patch("time.time", lambda: real_time() + ahead.total_seconds()),
        mock.patch("django.utils.timezone.now", lambda: real_now() + ahead),
    ):
        yield


BAD_ATTRIBUTES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"content_type": "text"}, ValueError),
    ({"content_type": "text/plain\r\nX-Evil: 1"}, ValueError),
    ({"content_type": "a/" + "b" * 300}, ValueError),
    ({"content_type": 42}, TypeError),
    ({"metadata": {"bad name": "x"}}, ValueError),
    ({"metadata": {"name": "line\nfeed"}}, ValueError),
    ({"metadata": {"name": "ключ"}}, ValueError),
    ({"metadata": {"n": "x" * MAX_METADATA_SIZE}}, ValueError),
    ({"metadata": {"n": 1}}, TypeError),
    ({"metadata": ["n"]}, TypeError),
    ({"expires": datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)}, ValueError),
    ({"expires": datetime.datetime(2999, 1, 1)}, ValueError),  # naive
    ({"expires": "2999-01-01"}, TypeError),
]


class AttributeTests(TestCaseMixin):
    """Every backend keeps what a write says about a blob, and folders of keys."""

    storage: AnyStorage

    def make_storage(self) -> AnyStorage:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.storage = self.make_storage()
        self.addCleanup(async_to_sync(self.storage.close))

    async def test_a_blob_carries_its_content_type_and_metadata(self) -> None:
        for data in (b"small", LARGE):
            with self.subTest(size=len(data)):
                info = await self.storage.write(
                    "k",
                    chunked(data, 1000),
                    content_type="Image/PNG",
                    metadata={"Author": "Ada", "x_y-z": ""},
                )
                assert info is not None
                self.assertEqual(info.content_type, "image/png")
                self.assertEqual(dict(info.metadata), {"author": "Ada", "x_y-z": ""})
                self.assertEqual(await self.storage.stat("k"), info)
                stream = await self.storage.stream("k")
                assert stream is not None
                async with stream:
                    self.assertEqual(stream.info, info)
                    self.assertEqual(await stream.read(), data)
                [listed] = await self.storage.list_blobs("k")
                self.assertEqual(listed, info)

    async def test_a_plain_write_is_octet_stream_and_a_replace_replaces_attributes(self) -> None:
        await self.storage.write("k", chunked(b"x", 1), content_type="text/plain; charset=utf-8")
        await self.storage.set("k", b"y")
        info = await self.storage.stat("k")
        assert info is not None
        self.assertEqual((info.content_type, dict(info.metadata)), (OCTET_STREAM, {}))

    async def test_bad_attributes_are_refused_and_store_nothing(self) -> None:
        await self.storage.set("k", b"old")
        for options, error in BAD_ATTRIBUTES:
            with self.subTest(options=options), self.assertRaises(error):
                await self.storage.write("k", chunked(b"new", 1), **options)
            self.assertEqual(await self.storage.get("k"), b"old")
            self.assertFalse(await self.storage.exists("other"))

    async def test_creation_time_stays_while_the_key_is_replaced(self) -> None:
        await self.storage.set("k", b"1")
        first = await self.storage.stat("k")
        await asyncio.sleep(0.01)
        await self.storage.write("k", chunked(LARGE, 5000))
        second = await self.storage.stat("k")
        assert first is not None and second is not None and first.created is not None
        self.assertEqual(second.created, first.created)
        self.assertGreater(second.updated, first.updated)
        self.assertLessEqual(first.created, first.updated)

    async def test_an_expired_blob_is_absent_to_every_read_and_purged(self) -> None:
        await self.storage.set("kept", b"kept")
        for data in (b"small", LARGE):
            await self.storage.write(f"gone{len(data)}", chunked(data, 4096), expires=soon())
        info = await self.storage.stat("gone5")
        assert info is not None and info.expires is not None
        self.assertEqual(await self.storage.get(f"gone{len(LARGE)}"), LARGE)
        with later():
            for key in ("gone5", f"gone{len(LARGE)}"):
                self.assertIsNone(await self.storage.get(key))
                self.assertFalse(await self.storage.exists(key))
                self.assertIsNone(await self.storage.stat(key))
                self.assertIsNone(await self.storage.stream(key))
                self.assertIsNone(await self.storage.fetch(key))
            self.assertEqual([i.key for i in await self.storage.list_blobs()], ["kept"])
            self.assertGreaterEqual(await self.storage.purge(), 2)
            self.assertEqual(await self.storage.purge(), 0)
            self.assertEqual(await self.storage.get("kept"), b"kept")

    async def test_an_expired_key_is_free_again(self) -> None:
        old = await self.storage.write("k", chunked(b"old", 1), expires=soon())
        with later():
            self.assertFalse(await self.storage.replace("k", b"x", sha256="0" * 64))
            new = await self.storage.write("k", chunked(b"new", 1), if_absent=True)
            self.assertEqual(await self.storage.get("k"), b"new")
        assert old is not None and old.created is not None
        assert new is not None and new.created is not None
        self.assertGreater(new.created, old.created)

    async def test_list_folder_answers_keys_and_sub_prefixes_in_order(self) -> None:
        keys = ["a/1", "a/b/2", "a/b/3", "a/c/d/4", "a/e", "a/ключ/5", "a/😀", "b/x", "top"]
        for key in keys:
            await self.storage.set(key, b"")
        self.assertEqual(_names(await self.storage.list_folder()), ["a/", "b/", "top"])
        expected = ["a/1", "a/b/", "a/c/", "a/e", "a/ключ/", "a/😀"]
        self.assertEqual(_names(await self.storage.list_folder("a/")), expected)
        self.assertEqual(_names(await self.storage.list_folder("a/c/")), ["a/c/d/"])
        by_letter = ["a/1", "a/b/2", "a/b/3", "a/c/d/4", "a/e", "a/клю", "a/😀"]
        self.assertEqual(_names(await self.storage.list_folder("a/", delimiter="ю")), by_letter)
        self.assertEqual(_names(await self.storage.list_folder("nothing/")), [])

    async def test_list_folder_pages_by_the_last_entry(self) -> None:
        for key in ["f/1", "f/2/a", "f/2/b", "f/3", "f/4/x/y", "f/5"]:
            await self.storage.set(key, b"")
        pages, after = [], ""
        while page := await self.storage.list_folder("f/", after=after, limit=2):
            pages.append(_names(page))
            last = page[-1]
            after = last if isinstance(last, str) else last.key
        self.assertEqual(pages, [["f/1", "f/2/"], ["f/3", "f/4/"], ["f/5"]])

    async def test_list_folder_refuses_bad_arguments(self) -> None:
        for options in ({"delimiter": ""}, {"limit": 0}, {"after": 1}):
            with self.subTest(options=options), self.assertRaises((TypeError, ValueError)):
                await self.storage.list_folder("", **options)


def _names(entries: list[BlobInfo | str]) -> list[str]:
    return [entry if isinstance(entry, str) else entry.key for entry in entries]


class DictAttributeTests(AttributeTests, SimpleTestCase):
    def make_storage(self) -> AnyStorage:
        return DictStorage(max_object_size=None)


class SQLiteAttributeTests(AttributeTests, SimpleTestCase):
    def make_storage(self) -> AnyStorage:
        self.path = Path(tempfile.mkdtemp()) / "blobs.sqlite3"
        return SQLiteStorage(self.path, max_object_size=None)

    async def test_a_file_of_an_earlier_blobstore_gains_the_columns(self) -> None:
        path = Path(tempfile.mkdtemp()) / "old.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(
                "CREATE TABLE blobs (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, "
                "size INTEGER NOT NULL, updated REAL NOT NULL, sha256 TEXT NOT NULL, version TEXT)"
            )
            db.execute("INSERT INTO blobs VALUES ('old', x'6869', 2, 1000.0, 'digest', NULL)")
        async with SQLiteStorage(path) as storage:
            info = await storage.stat("old")
            self.assertEqual(await storage.get("old"), b"hi")
        assert info is not None
        self.assertEqual(
            (info.content_type, dict(info.metadata), info.expires), (OCTET_STREAM, {}, None)
        )
        self.assertEqual(info.created, info.updated)


class ORMAttributeTests(AttributeTests, TestCase):
    databases = {"default", "postgres"}
    using = "default"

    def make_storage(self) -> AnyStorage:
        return ORMStorage(using=self.using, max_object_size=None)

    def test_expiry_holds_without_use_tz(self) -> None:
        # Changed on the thread whose connections the storage uses, which Django
        # then sets to the new time zone (an async test changes its loop's thread).
        with override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris"):
            async_to_sync(self.expiry_holds)()

    async def expiry_holds(self) -> None:
        kept_until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
        written = await self.storage.write("kept", chunked(b"x", 1), expires=kept_until)
        # A new key: created when updated (the REST API's 201), both in local time, naive.
        assert written is not None
        self.assertEqual(written.created, written.updated)
        self.assertTrue(timezone.is_naive(written.updated))
        await self.storage.write("gone", chunked(b"x", 1), expires=soon())
        with later():
            self.assertEqual(await self.storage.get("kept"), b"x")
            self.assertTrue(await self.storage.exists("kept"))
            info = await self.storage.stat("kept")
            self.assertIsNone(await self.storage.get("gone"))
            self.assertFalse(await self.storage.exists("gone"))
        assert info is not None and info.expires is not None
        # In Django's form without USE_TZ: local time, naive.
        self.assertEqual(info.expires, timezone.make_naive(kept_until))
        self.assertEqual(info.created, written.created)


class ORMPostgreSQLAttributeTests(ORMAttributeTests):
    using = "postgres"


class MigrationTests(TransactionTestCase):
    """Migration 0004 keeps the blobs that a database holds already."""

    databases = {"default", "postgres"}

    def test_blobs_stored_before_the_migration_survive_it(self) -> None:
        for using in ("default", "postgres"):
            with self.subTest(database=connections[using].vendor):
                self.migrate(using, "0003_chunks")
                try:
                    with connections[using].cursor() as cursor:
                        cursor.execute(
                            "INSERT INTO blobstore_blob (key, data, size, sha256, created, "
                            "updated) VALUES ('before', %s, 2, 'digest', %s, %s)",
                            [b"hi", *[datetime.datetime.now(datetime.UTC)] * 2],
                        )
                finally:
                    self.migrate(using, "0004_blob_attributes")
                storage = ORMStorage(using=using)
                info = async_to_sync(storage.stat)("before")
                assert info is not None
                self.assertEqual(async_to_sync(storage.get)("before"), b"hi")
                self.assertEqual((info.content_type, dict(info.metadata)), (OCTET_STREAM, {}))

    def migrate(self, using: str, name: str) -> None:
        executor = MigrationExecutor(connections[using])
        executor.migrate([("blobstore", name)])
