"""The storage contract, proved for every backend by one shared mixin."""

from __future__ import annotations

import array
import asyncio
import datetime
import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import proxystore.endpoint.storage as upstream
from asgiref.sync import async_to_sync
from django.db import connections
from django.test import SimpleTestCase, TestCase
from django.utils import timezone

from blobstore.exceptions import ObjectSizeExceededError
from blobstore.models import Blob
from blobstore.storage import (
    MAX_KEY_LENGTH,
    BlobInfo,
    BlobStorage,
    DictStorage,
    ListingStorage,
    ORMStorage,
    SQLiteStorage,
    Storage,
)

GOOD_KEYS = [
    "k",
    "a/b/c.txt",
    "with space and %2F and ?query#frag",
    "ключ",
    "鍵",
    "emoji 😀",
    "x" * MAX_KEY_LENGTH,
    "😀" * (MAX_KEY_LENGTH // 4),
    "鍵" * (MAX_KEY_LENGTH // 3),
    "'quotes\"",
    "\x80 C1 controls \x9f are text",
]

BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (1, TypeError),
    (None, TypeError),
    (b"key", TypeError),
    (["key"], TypeError),
    ("", ValueError),
    ("x" * (MAX_KEY_LENGTH + 1), ValueError),
    ("nul\x00inside", ValueError),
    ("lone \ud800 surrogate", ValueError),
    ("😀" * (MAX_KEY_LENGTH // 4) + "x", ValueError),
    ("鍵" * (MAX_KEY_LENGTH // 3 + 1), ValueError),
    ("line\nfeed", ValueError),
    ("tab\tinside", ValueError),
    ("delete \x7f", ValueError),
    ("ключ\r", ValueError),
]

SHA256_HELLO = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

AnyStorage = DictStorage | SQLiteStorage | ORMStorage

# The mixins are test cases to the type checker, plain classes to unittest.
if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object

BAD_BLOBS: list[Any] = ["text", 42, None, [1, 2], {"b": 1}, array.array("b", [1])]


class StorageTests(TestCaseMixin):
    """Every rule of SPEC §2; a subclass says how to make the backend."""

    storage: AnyStorage

    def make_storage(self, **options: Any) -> AnyStorage:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.storage = self.make_storage()
        self.addCleanup(async_to_sync(self.storage.close))

    async def snapshot(self) -> dict[str, bytes | None]:
        """Return every stored key with its blob, to show that nothing changed."""
        infos = await self.storage.list_blobs(limit=10_000)
        return {info.key: await self.storage.get(info.key) for info in infos}

    # The protocol, as ProxyStore's own storage tests state it.

    async def test_upstream_basics(self) -> None:
        await self.storage.evict("key")
        self.assertFalse(await self.storage.exists("key"))
        self.assertIsNone(await self.storage.get("key"))
        await self.storage.set("key", b"data")
        self.assertTrue(await self.storage.exists("key"))
        self.assertEqual(await self.storage.get("key"), b"data")
        await self.storage.evict("key")
        self.assertFalse(await self.storage.exists("key"))
        self.assertIsNone(await self.storage.get("key"))
        self.assertEqual(await self.storage.get("key", b"123"), b"123")

    async def test_upstream_max_object_size_exceeded(self) -> None:
        storage = self.make_storage(max_object_size=100)
        with self.assertRaises(ObjectSizeExceededError):
            await storage.set("key", b"x" * 1000)
        await storage.close()

    async def test_close_of_unused_storage(self) -> None:
        await self.make_storage().close()

    def test_is_a_proxystore_storage(self) -> None:
        self.assertIsInstance(self.storage, upstream.Storage)
        self.assertIsInstance(self.storage, Storage)
        self.assertIsInstance(self.storage, ListingStorage)
        self.assertIsInstance(self.storage, BlobStorage)

    # get, set, exists, evict.

    async def test_get_returns_bytes(self) -> None:
        await self.storage.set("k", b"abc")
        self.assertIs(type(await self.storage.get("k")), bytes)

    async def test_get_absent_returns_default(self) -> None:
        self.assertIsNone(await self.storage.get("absent"))
        self.assertEqual(await self.storage.get("absent", b"fallback"), b"fallback")

    async def test_set_replaces(self) -> None:
        await self.storage.set("k", b"old")
        await self.storage.set("k", b"new")
        self.assertEqual(await self.storage.get("k"), b"new")

    async def test_set_accepts_bytes_like_and_stores_bytes(self) -> None:
        buffer = bytearray(b"from a bytearray")
        await self.storage.set("bytearray", buffer)
        buffer[:4] = b"XXXX"
        await self.storage.set("memoryview", memoryview(b"0123456789")[2:5])
        await self.storage.set("ints", memoryview(array.array("i", [1, 2])))
        await self.storage.set("strided", memoryview(b"abcdef")[::2])
        self.assertEqual(await self.storage.get("bytearray"), b"from a bytearray")
        self.assertEqual(await self.storage.get("memoryview"), b"234")
        self.assertEqual(await self.storage.get("ints"), array.array("i", [1, 2]).tobytes())
        self.assertEqual(await self.storage.get("strided"), b"ace")
        for key in ("bytearray", "memoryview", "ints", "strided"):
            self.assertIs(type(await self.storage.get(key)), bytes)

    async def test_empty_blob_is_not_absence(self) -> None:
        await self.storage.set("empty", b"")
        self.assertEqual(await self.storage.get("empty", b"default"), b"")
        self.assertTrue(await self.storage.exists("empty"))

    async def test_binary_data_round_trips(self) -> None:
        data = bytes(range(256)) * 64
        await self.storage.set("binary", data)
        self.assertEqual(await self.storage.get("binary"), data)

    async def test_evict_of_absent_key_is_no_error(self) -> None:
        await self.storage.set("other", b"x")
        await self.storage.evict("absent")
        self.assertEqual(await self.snapshot(), {"other": b"x"})

    async def test_exists_agrees_with_get(self) -> None:
        await self.storage.set("here", b"x")
        for key in ("here", "gone"):
            self.assertEqual(
                await self.storage.exists(key), await self.storage.get(key) is not None
            )

    async def test_every_valid_key_round_trips(self) -> None:
        for number, key in enumerate(GOOD_KEYS):
            with self.subTest(key=key[:20]):
                await self.storage.set(key, str(number).encode())
                self.assertTrue(await self.storage.exists(key))
                self.assertEqual(await self.storage.get(key), str(number).encode())
        self.assertEqual(set(await self.snapshot()), set(GOOD_KEYS))
        for key in GOOD_KEYS:
            await self.storage.evict(key)
        self.assertEqual(await self.snapshot(), {})

    async def test_keys_differing_only_in_case_are_distinct(self) -> None:
        await self.storage.set("Key", b"upper")
        await self.storage.set("key", b"lower")
        self.assertEqual(await self.storage.get("Key"), b"upper")
        self.assertEqual(await self.storage.get("key"), b"lower")

    # Bad input: the right error, and nothing changes.

    async def test_bad_keys_raise_and_change_nothing(self) -> None:
        await self.storage.set("existing", b"kept")
        for key, error in BAD_KEYS:
            with self.subTest(key=repr(key)[:30]):
                with self.assertRaises(error):
                    await self.storage.set(key, b"value")
                with self.assertRaises(error):
                    await self.storage.get(key)
                with self.assertRaises(error):
                    await self.storage.exists(key)
                with self.assertRaises(error):
                    await self.storage.evict(key)
        self.assertEqual(await self.snapshot(), {"existing": b"kept"})

    async def test_bad_blobs_raise_type_error_and_change_nothing(self) -> None:
        await self.storage.set("existing", b"kept")
        for blob in BAD_BLOBS:
            with self.subTest(blob=repr(blob)):
                for key in ("existing", "new"):
                    with self.assertRaises(TypeError):
                        await self.storage.set(key, blob)
        self.assertEqual(await self.snapshot(), {"existing": b"kept"})

    async def test_size_limit_is_inclusive_and_changes_nothing(self) -> None:
        storage = self.make_storage(max_object_size=100)
        try:
            await storage.set("fits", b"x" * 100)
            for blob in (b"y" * 101, bytearray(101), memoryview(array.array("i", [0] * 26))):
                with self.assertRaises(ObjectSizeExceededError) as raised:
                    await storage.set("fits", blob)
                self.assertIsInstance(raised.exception, ValueError)
                self.assertIn("100 bytes", str(raised.exception))
            with self.assertRaises(ObjectSizeExceededError):
                await storage.set("new", b"z" * 101)
            self.assertEqual(await storage.get("fits"), b"x" * 100)
            self.assertFalse(await storage.exists("new"))
        finally:
            await storage.close()

    async def test_no_size_limit(self) -> None:
        storage = self.make_storage(max_object_size=None)
        try:
            await storage.set("large", b"x" * (3 * 1024 * 1024))
            self.assertEqual(len(await storage.get("large") or b""), 3 * 1024 * 1024)
        finally:
            await storage.close()

    def test_bad_max_object_size_is_refused(self) -> None:
        for value, error in ((-1, ValueError), ("100", TypeError), (1.5, TypeError)):
            with self.subTest(value=value), self.assertRaises(error):
                self.make_storage(max_object_size=value)

    # Concurrency and life cycle.

    async def test_concurrent_coroutines(self) -> None:
        keys = [f"key-{n}" for n in range(40)]
        await asyncio.gather(*(self.storage.set(key, key.encode()) for key in keys))
        values = [f"same-{n}".encode() * 100 for n in range(20)]
        await asyncio.gather(*(self.storage.set("same", value) for value in values))
        blobs = await asyncio.gather(*(self.storage.get(key) for key in keys))
        self.assertEqual(blobs, [key.encode() for key in keys])
        self.assertIn(await self.storage.get("same"), values)

    async def test_async_context_manager_returns_the_storage(self) -> None:
        storage = self.make_storage()
        async with storage as entered:
            self.assertIs(entered, storage)
            await entered.set("k", b"v")
            self.assertEqual(await entered.get("k"), b"v")

    # Metadata and conditional writes.

    async def test_stat_and_fetch(self) -> None:
        self.assertIsNone(await self.storage.stat("absent"))
        self.assertIsNone(await self.storage.fetch("absent"))
        before = timezone.now() - datetime.timedelta(seconds=1)
        await self.storage.set("k", b"hello")
        info = await self.storage.stat("k")
        assert info is not None
        self.assertEqual((info.key, info.size, info.sha256), ("k", 5, SHA256_HELLO))
        self.assertTrue(before <= info.updated <= timezone.now() + datetime.timedelta(seconds=1))
        self.assertEqual(await self.storage.fetch("k"), (info, b"hello"))
        await self.storage.set("k", bytearray(b"bye"))
        fetched = await self.storage.fetch("k")
        assert fetched is not None
        self.assertEqual((fetched[0].size, fetched[1]), (3, b"bye"))
        self.assertIs(type(fetched[1]), bytes)

    async def test_create_only_when_absent(self) -> None:
        self.assertTrue(await self.storage.create("k", b"first"))
        self.assertFalse(await self.storage.create("k", b"second"))
        self.assertEqual(await self.storage.get("k"), b"first")
        self.assertTrue(await self.storage.create("empty", b""))
        self.assertEqual(await self.storage.get("empty"), b"")

    async def test_replace_only_when_digest_matches(self) -> None:
        self.assertFalse(await self.storage.replace("k", b"new", sha256=SHA256_HELLO))
        self.assertFalse(await self.storage.exists("k"))
        await self.storage.set("k", b"hello")
        self.assertFalse(await self.storage.replace("k", b"new", sha256="0" * 64))
        self.assertEqual(await self.storage.get("k"), b"hello")
        self.assertTrue(await self.storage.replace("k", b"new", sha256=SHA256_HELLO))
        self.assertEqual(await self.storage.get("k"), b"new")
        info = await self.storage.stat("k")
        assert info is not None
        self.assertEqual((info.size, info.sha256), (3, hashlib.sha256(b"new").hexdigest()))

    async def test_concurrent_creates_store_one_blob(self) -> None:
        values = [f"v{n}".encode() for n in range(10)]
        created = await asyncio.gather(*(self.storage.create("k", value) for value in values))
        self.assertEqual(created.count(True), 1)
        self.assertEqual(await self.storage.get("k"), values[created.index(True)])

    async def test_conditional_writes_check_their_input(self) -> None:
        await self.storage.set("k", b"kept")
        storage = self.make_storage(max_object_size=4)
        text, number, nothing, raw_key = cast(Any, ("text", 5, None, b"k"))
        cases: list[tuple[Any, type[Exception]]] = [
            (self.storage.create("", b"x"), ValueError),
            (self.storage.create("k2", text), TypeError),
            (self.storage.replace("k", b"x", sha256=nothing), TypeError),
            (self.storage.replace("k", number, sha256=SHA256_HELLO), TypeError),
            (self.storage.stat(raw_key), TypeError),
            (self.storage.fetch("\x00"), ValueError),
            (storage.create("big", b"12345"), ObjectSizeExceededError),
        ]
        for call, error in cases:
            with self.assertRaises(error):
                await call
        await storage.close()
        self.assertEqual(await self.snapshot(), {"k": b"kept"})

    # Listing.

    async def test_list_blobs_in_code_point_order_with_metadata(self) -> None:
        keys = ["b", "a", "B", "a/b", "ab", "é", "😀", "a\U0010ffff", "z"]
        before = timezone.now() - datetime.timedelta(seconds=1)
        for key in keys:
            await self.storage.set(key, key.encode() * 3)
        after = timezone.now() + datetime.timedelta(seconds=1)
        infos = await self.storage.list_blobs()
        self.assertEqual([info.key for info in infos], sorted(keys))
        for info in infos:
            self.assertIsInstance(info, BlobInfo)
            self.assertEqual(info.size, len(info.key.encode()) * 3)
            self.assertEqual(info.sha256, hashlib.sha256(info.key.encode() * 3).hexdigest())
            self.assertIsNotNone(info.updated.tzinfo)
            self.assertTrue(before <= info.updated <= after, info.updated)

    async def test_list_blobs_by_prefix(self) -> None:
        for key in [
            "a",
            "a/1",
            "a/2",
            "a0",
            "a\U0010ffff",
            "b",
            "A/1",
            "\U0010ffff",
            "\U0010ffffx",
        ]:
            await self.storage.set(key, b"")
        cases = {
            "a/": ["a/1", "a/2"],
            "a": ["a", "a/1", "a/2", "a0", "a\U0010ffff"],
            "A": ["A/1"],
            "\U0010ffff": ["\U0010ffff", "\U0010ffffx"],
            "c": [],
        }
        for prefix, expected in cases.items():
            with self.subTest(prefix=prefix):
                infos = await self.storage.list_blobs(prefix)
                self.assertEqual([info.key for info in infos], expected)

    async def test_list_blobs_in_pages(self) -> None:
        keys = sorted(f"page/{n:03}" for n in range(25))
        for key in keys:
            await self.storage.set(key, b"x")
        await self.storage.set("other", b"x")
        seen: list[str] = []
        after = ""
        while page := await self.storage.list_blobs("page/", after=after, limit=10):
            self.assertLessEqual(len(page), 10)
            seen += [info.key for info in page]
            after = page[-1].key
        self.assertEqual(seen, keys)

    async def test_list_blobs_bad_arguments(self) -> None:
        cases: list[tuple[dict[str, Any], type[Exception]]] = [
            ({"prefix": 1}, TypeError),
            ({"after": None}, TypeError),
            ({"limit": "10"}, TypeError),
            ({"limit": True}, TypeError),
            ({"limit": 0}, ValueError),
            ({"prefix": "\udfff"}, ValueError),
            ({"prefix": "nul\x00"}, ValueError),
            ({"after": "line\nfeed"}, ValueError),
        ]
        for arguments, error in cases:
            with self.subTest(arguments=arguments), self.assertRaises(error):
                await self.storage.list_blobs(**arguments)


class PersistentStorageTests(StorageTests):
    """Rules for backends that keep blobs outside the process."""

    async def test_upstream_persists_after_close(self) -> None:
        await self.storage.set("key", b"data")
        await self.storage.close()
        reopened = self.make_storage()
        self.assertTrue(await reopened.exists("key"))
        self.assertEqual(await reopened.get("key"), b"data")
        await reopened.close()

    async def test_usable_again_after_close(self) -> None:
        await self.storage.set("key", b"data")
        await self.storage.close()
        self.assertEqual(await self.storage.get("key"), b"data")
        await self.storage.set("key", b"again")
        self.assertEqual(await self.storage.get("key"), b"again")


class DictStorageTests(StorageTests, SimpleTestCase):
    def make_storage(self, **options: Any) -> AnyStorage:
        return DictStorage(**options)

    async def test_close_forgets_blobs_as_upstream_does(self) -> None:
        await self.storage.set("key", b"data")
        await self.storage.close()
        self.assertFalse(await self.storage.exists("key"))
        self.assertEqual(await self.storage.list_blobs(), [])


class SQLiteMemoryStorageTests(StorageTests, SimpleTestCase):
    def make_storage(self, **options: Any) -> AnyStorage:
        return SQLiteStorage(**options)


class SQLiteFileStorageTests(PersistentStorageTests, SimpleTestCase):
    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.path = Path(directory.name) / "blobs.sqlite3"
        super().setUp()

    def make_storage(self, **options: Any) -> AnyStorage:
        return SQLiteStorage(self.path, **options)

    async def test_opens_lazily_in_wal_mode(self) -> None:
        self.assertFalse(self.path.exists())
        storage = SQLiteStorage(self.path)
        db = await storage.db()
        rows = list(await db.execute_fetchall("PRAGMA journal_mode"))
        self.assertEqual(rows[0][0], "wal")
        self.assertIs(await storage.db(), db)
        await storage.close()

    async def test_concurrent_first_use_opens_one_connection(self) -> None:
        storage = SQLiteStorage(self.path)
        connections = await asyncio.gather(*(storage.db() for _ in range(10)))
        self.assertEqual(len({id(connection) for connection in connections}), 1)
        await storage.close()

    def test_path_is_resolved(self) -> None:
        self.assertEqual(SQLiteStorage("~/x.db").database_path, str(Path("~/x.db").expanduser()))

    def test_bad_synchronous_is_refused(self) -> None:
        with self.assertRaisesMessage(ValueError, "synchronous"):
            SQLiteStorage(self.path, synchronous="SOMETIMES")


class ORMStorageTests(PersistentStorageTests, TestCase):
    """ORMStorage on the default database: SQLite, or what DATABASE_URL names."""

    databases = {"default"}
    using = "default"

    def make_storage(self, **options: Any) -> AnyStorage:
        return ORMStorage(using=self.using, **options)

    async def test_row_records_size_digest_and_times(self) -> None:
        await self.storage.set("k", b"first")
        row = await Blob.objects.using(self.using).aget(key="k")
        self.assertEqual((row.size, bytes(row.data)), (5, b"first"))
        self.assertEqual(
            row.sha256, "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
        )
        await self.storage.set("k", b"second!")
        replaced = await Blob.objects.using(self.using).aget(key="k")
        self.assertEqual((replaced.pk, replaced.size), (row.pk, 7))
        self.assertEqual(replaced.created, row.created)
        self.assertGreaterEqual(replaced.updated, row.updated)
        self.assertEqual(await Blob.objects.using(self.using).acount(), 1)

    def test_bad_alias_type_is_refused(self) -> None:
        with self.assertRaises(TypeError):
            ORMStorage(using=None)  # type: ignore[arg-type]


class ORMStoragePostgreSQLTests(ORMStorageTests):
    """ORMStorage on PostgreSQL, whatever the default database is."""

    databases = {"postgres"}
    using = "postgres"

    def test_runs_on_postgresql(self) -> None:
        self.assertEqual(connections[self.using].vendor, "postgresql")

    async def test_longest_key_of_four_byte_characters_is_indexed(self) -> None:
        key = "😀" * (MAX_KEY_LENGTH // 4)
        await self.storage.set(key, b"x")
        await self.storage.set(key, b"y")
        self.assertEqual(await self.storage.get(key), b"y")
