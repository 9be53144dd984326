"""Cancellation at every await point of every write leaves the old blob or the new one, whole.

A client that gives up cancels the coroutine of its request, but not the
work that the coroutine handed to a thread. :func:`drive` runs a write as
an asyncio task would and throws ``CancelledError`` into it at its n-th
suspension, for every n: deterministic, without sleeps. After each, the
blob must be the old one or the new one, whole; no chunk row may be left
that no blob names; and nothing may change afterwards, which would mean
that thread work outlived the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.db import connections
from django.test import SimpleTestCase, TransactionTestCase

from blobstore.models import Blob, BlobChunk
from blobstore.storage import ORMStorage, SQLiteStorage

if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object

CHUNK = 8
"""A chunk size that makes blobs of a few chunks small and their tests fast."""
OLD = bytes(range(100, 100 + 3 * CHUNK + 3))  # a head and three chunks
NEW = bytes(range(4 * CHUNK + 5))
SMALL = b"tiny"
KEY = "some/key"

Operation = Callable[[SQLiteStorage | ORMStorage], Coroutine[Any, Any, object]]


async def body(data: bytes) -> AsyncIterator[bytes]:
    """Yield data in pieces of 5 bytes, pausing between them as a network body does."""
    for offset in range(0, len(data), 5):
        await asyncio.sleep(0)
        yield data[offset : offset + 5]


# Each write, and the blobs it may leave under KEY (None: no blob), given OLD there.
OPERATIONS: dict[str, tuple[Operation, set[bytes | None]]] = {
    "write": (lambda s: s.write(KEY, body(NEW)), {OLD, NEW}),
    "write if_sha256": (
        lambda s: s.write(KEY, body(NEW), if_sha256=hashlib.sha256(OLD).hexdigest()),
        {OLD, NEW},
    ),
    "write if_absent on another key": (
        lambda s: s.write(KEY + "2", body(NEW), if_absent=True),
        {OLD},
    ),
    "set chunked": (lambda s: s.set(KEY, NEW), {OLD, NEW}),
    "set one chunk over chunked": (lambda s: s.set(KEY, SMALL), {OLD, SMALL}),
    # A blob of one row on a free key: committed with the other writers' of the moment.
    "set one chunk on another key": (lambda s: s.set(KEY + "2", SMALL), {OLD}),
    "replace": (lambda s: s.replace(KEY, NEW, sha256=hashlib.sha256(OLD).hexdigest()), {OLD, NEW}),
    "create on another key": (lambda s: s.create(KEY + "2", NEW), {OLD}),
    "evict": (lambda s: s.evict(KEY), {OLD, None}),
}


async def drive(coroutine: Coroutine[Any, Any, object], cancel_at: int | None) -> tuple[bool, int]:
    """Run coroutine as a task would, cancelling it at its cancel_at-th suspension.

    Return whether it was cancelled, and how often it suspended.
    """
    suspensions = 0
    throw: BaseException | None = None
    while True:
        try:
            waited = coroutine.throw(throw) if throw is not None else coroutine.send(None)
        except StopIteration:
            return False, suspensions
        except asyncio.CancelledError:
            return True, suspensions
        throw = None
        suspensions += 1
        if suspensions == cancel_at:
            # What Task.cancel() does: cancel the awaited future, raise in the coroutine.
            if waited is not None:
                waited.cancel()
            throw = asyncio.CancelledError()
        elif waited is None:
            await asyncio.sleep(0)  # a bare yield, as asyncio.sleep(0) makes
        else:
            waited._asyncio_future_blocking = False
            await asyncio.wait([waited])


class CancellationTests(TestCaseMixin):
    """Every write of a chunked backend, cancelled at each of its await points."""

    storage: SQLiteStorage | ORMStorage
    outcome_after_lock = OLD
    """What a write cancelled while it waits for lock_blob() leaves.

    A lock on the whole database stops the upload's first chunk, and the
    upload is abandoned; a lock on the row stops only the commit, which ends
    once the lock is released.
    """

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
        self.storage.chunk_size = CHUNK
        self.addCleanup(async_to_sync(self.storage.close))

    async def state(self) -> tuple[bytes | None, bytes | None, set[str]]:
        """Return the blobs under KEY and its sibling, and the chunk versions no blob names."""
        orphans = await self.chunk_versions() - await self.named_versions()
        return await self.storage.get(KEY), await self.storage.get(KEY + "2"), orphans

    async def reset(self) -> None:
        await self.storage.evict(KEY + "2")
        await self.storage.set(KEY, OLD)
        self.assertEqual(await self.state(), (OLD, None, set()))

    async def test_every_cancellation_point_of_every_write(self) -> None:
        for name, (operation, outcomes) in OPERATIONS.items():
            await self.reset()
            cancelled, suspensions = await drive(operation(self.storage), None)
            self.assertFalse(cancelled)
            self.assertGreater(suspensions, 0)
            for step in range(1, suspensions + 1):
                with self.subTest(name, step=step, of=suspensions):
                    await self.reset()
                    cancelled, reached = await drive(operation(self.storage), step)
                    # Thread work that ends before it is awaited saves a suspension:
                    # a run may end before its step; otherwise the cancellation shows.
                    self.assertTrue(cancelled or reached < step, "CancelledError must propagate")
                    after = await self.state()
                    self.assertIn(after[0], outcomes)
                    self.assertIn(after[1], {None, NEW, SMALL})
                    self.assertEqual(after[2], set(), "chunks left that no blob names")
                    await asyncio.sleep(0.02)  # work that outlived the cancellation lands here
                    self.assertEqual(await self.state(), after)

    async def test_cancellation_waits_for_a_commit_blocked_by_a_lock(self) -> None:
        await self.assert_cancellation_waits_for_the_lock(
            self.storage.write(KEY, body(NEW)), self.outcome_after_lock
        )

    async def test_cancellation_waits_for_a_grouped_commit_blocked_by_a_lock(self) -> None:
        # A blob of one row is committed with the other writers' of the moment,
        # and no chunk of it waits for the lock: it is stored once the lock goes.
        await self.assert_cancellation_waits_for_the_lock(self.storage.set(KEY, SMALL), SMALL)

    async def assert_cancellation_waits_for_the_lock(
        self, write: Coroutine[Any, Any, object], outcome: bytes
    ) -> None:
        """Cancel write while its commit waits for a lock: it must end after the commit."""
        await self.reset()
        release = await self.lock_blob(KEY)
        writing = asyncio.ensure_future(write)
        await self.until_a_write_waits_for_the_lock()
        self.assertFalse(writing.done())
        writing.cancel()
        await asyncio.sleep(0.2)
        self.assertFalse(writing.done(), "cancelled before the commit's outcome was known")
        release()
        with self.assertRaises(asyncio.CancelledError):
            await writing
        self.assertEqual(await self.state(), (outcome, None, set()))

    async def lock_blob(self, key: str) -> Callable[[], None]:
        """Hold a write lock on the blob's row (or the database) from another connection."""
        raise NotImplementedError

    async def until_a_write_waits_for_the_lock(self) -> None:
        """Return once a write waits for the lock that lock_blob() holds."""
        # SQLite shows nobody its waiters; its lock on the whole database
        # stops the write's first statement, which comes at once.
        await asyncio.sleep(0.2)


class SQLiteCancellationTests(CancellationTests, SimpleTestCase):
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

    async def lock_blob(self, key: str) -> Callable[[], None]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("BEGIN IMMEDIATE")
        return db.close  # closing rolls back, which releases the lock


class ORMCancellationTests(CancellationTests, TransactionTestCase):
    databases = {"default", "postgres"}
    using = "default"

    def make_storage(self) -> SQLiteStorage | ORMStorage:
        return ORMStorage(using=self.using, max_object_size=None, timeout=10)

    async def chunk_versions(self) -> set[str]:
        chunks = BlobChunk.objects.using(self.using).values_list("version", flat=True)
        return {str(version) async for version in chunks}

    async def named_versions(self) -> set[str]:
        blobs = Blob.objects.using(self.using).exclude(version=None)
        return {str(version) async for version in blobs.values_list("version", flat=True)}

    async def lock_blob(self, key: str) -> Callable[[], None]:
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=self.hold_lock, args=(key, locked, release))
        holder.start()
        await asyncio.get_running_loop().run_in_executor(None, locked.wait, 10)

        def release_lock() -> None:
            release.set()
            holder.join()

        return release_lock

    def hold_lock(self, key: str, locked: threading.Event, release: threading.Event) -> None:
        connection = connections.create_connection(self.using)
        try:
            connection.set_autocommit(False)
            with connection.cursor() as cursor:
                if connection.vendor == "sqlite":
                    cursor.execute("UPDATE blobstore_blob SET size = size WHERE key = %s", [key])
                else:
                    cursor.execute("SELECT 1 FROM blobstore_blob WHERE key = %s FOR UPDATE", [key])
            locked.set()
            release.wait(10)
            connection.rollback()
        finally:
            connection.close()

    async def until_a_write_waits_for_the_lock(self) -> None:
        if connections[self.using].vendor == "sqlite":
            return await super().until_a_write_waits_for_the_lock()
        # A row lock stops only the commit, which comes after every chunk: on
        # a loaded machine later than any fixed sleep, so ask the server.
        waiting = await asyncio.get_running_loop().run_in_executor(None, self.lock_waiter_seen)
        self.assertTrue(waiting, "no write waited for the lock within 10 s")

    def lock_waiter_seen(self) -> bool:
        """Return whether a backend waits for a lock within 10 s."""
        connection = connections.create_connection(self.using)
        try:
            with connection.cursor() as cursor:
                for _ in range(1000):
                    cursor.execute(
                        "SELECT 1 FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    if cursor.fetchone():
                        return True
                    time.sleep(0.01)
            return False
        finally:
            connection.close()

    @property
    def outcome_after_lock(self) -> bytes:  # type: ignore[override]
        # The default database may be either (DATABASE_URL): the lock decides, as above.
        return OLD if connections[self.using].vendor == "sqlite" else NEW


class ORMPostgreSQLCancellationTests(ORMCancellationTests):
    using = "postgres"
