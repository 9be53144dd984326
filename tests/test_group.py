"""Small writes that come at once share a commit, and each is answered once committed."""

from __future__ import annotations

import asyncio
import datetime
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import async_to_sync
from django.db import DatabaseError, transaction
from django.test import SimpleTestCase, TransactionTestCase

from blobstore.storage import ORMStorage, SQLiteStorage
from blobstore.storage.base import once
from blobstore.storage.chunked import GROUP_LIMIT, ChunkedStorage, CommitGroup, Version

T = TypeVar("T")

# The mixin is a test case to the type checker, a plain class to unittest.
if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object


class CommitGroupMixin(TestCaseMixin):
    """What every storage that groups its small writes does; the subclass makes the storage."""

    def make_storage(self) -> ChunkedStorage:
        raise NotImplementedError

    async def test_concurrent_writes_share_few_commits(self) -> None:
        storage = self.make_storage()
        groups = count_groups(storage)
        await asyncio.gather(*(storage.set(f"k{i}", b"%d" % i) for i in range(50)))
        self.assertEqual(sum(groups), 50)
        self.assertLess(len(groups), 50)
        self.assertEqual(await storage.get("k7"), b"7")
        await asyncio.gather(*(storage.set("same", b"%d" % i) for i in range(20)))
        self.assertEqual(await storage.get("same"), b"19")  # the last writer wins

    async def test_writers_of_one_key_in_a_group_commit_as_if_in_turn(self) -> None:
        storage = self.make_storage()
        groups = count_groups(storage)
        written = await asyncio.gather(*(storage.write("one", once(b"%d" % i)) for i in range(10)))
        infos = [info for info in written if info is not None]
        self.assertEqual(len(infos), 10)
        self.assertLess(len(groups), 10)  # some of them shared a statement
        # The first to commit created the key; the others replaced it.
        first = min(infos, key=lambda info: info.updated)
        self.assertEqual([info.created for info in infos], [first.updated] * 10)
        self.assertEqual(await storage.stat("one"), max(infos, key=lambda i: i.updated))

    async def test_a_group_is_at_most_the_limit(self) -> None:
        storage = self.make_storage()
        groups = count_groups(storage)
        count = 3 * GROUP_LIMIT
        await asyncio.gather(*(storage.set(f"k{i}", b"%d" % i) for i in range(count)))
        self.assertEqual(sum(groups), count)
        self.assertLessEqual(max(groups), GROUP_LIMIT)
        self.assertEqual(await storage.get(f"k{count - 1}"), b"%d" % (count - 1))

    async def test_a_failed_group_fails_each_of_its_writers(self) -> None:
        storage = self.make_storage()

        async def failing(rows: list[Version]) -> list[object]:
            raise DatabaseError("the disk is gone")

        storage._group.commit_many = failing  # type: ignore[attr-defined]
        results = await asyncio.gather(
            *(storage.set(f"k{i}", b"x") for i in range(5)), return_exceptions=True
        )
        self.assertEqual([type(result) for result in results], [DatabaseError] * 5)


def count_groups(storage: ChunkedStorage) -> list[int]:
    """Record the size of each group that storage commits."""
    groups: list[int] = []
    group = storage._group  # type: ignore[attr-defined]
    commit_many = group.commit_many

    async def counted(rows: list[Version]) -> list[datetime.datetime | None]:
        groups.append(len(rows))
        return await commit_many(rows)  # type: ignore[no-any-return]

    group.commit_many = counted
    return groups


class ORMStorageOnSQLiteTests(CommitGroupMixin, TransactionTestCase):
    def make_storage(self) -> ChunkedStorage:
        return ORMStorage()

    def test_a_group_inside_the_callers_transaction_rolls_back_with_it(self) -> None:
        storage = ORMStorage()
        with self.assertRaises(ZeroDivisionError), transaction.atomic():
            async_to_sync(storage.set)("undone", b"x")
            self.assertEqual(async_to_sync(storage.get)("undone"), b"x")
            1 / 0  # noqa: B018
        self.assertIsNone(async_to_sync(storage.get)("undone"))


class ORMStorageOnPostgreSQLTests(CommitGroupMixin, TransactionTestCase):
    databases = {"default", "postgres"}

    def make_storage(self) -> ChunkedStorage:
        return ORMStorage(using="postgres")


class SQLiteStorageTests(CommitGroupMixin, TransactionTestCase):
    def make_storage(self) -> ChunkedStorage:
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        storage = SQLiteStorage(Path(folder.name) / "blobs.sqlite3")
        self.addCleanup(async_to_sync(storage.close))
        return storage


class ClosingLoopTests(SimpleTestCase):
    """A closing event loop cancels every task, the group's too: no writer is left waiting."""

    def test_a_statement_under_way_answers_its_writers_and_those_behind_it_are_cancelled(
        self,
    ) -> None:
        async def scenario() -> list[object]:
            sent, finish = asyncio.Event(), asyncio.Event()

            async def commit_many(rows: list[Version]) -> list[datetime.datetime | None]:
                sent.set()
                await finish.wait()
                return [row.updated for row in rows]

            group = CommitGroup(commit_many)
            writers = [asyncio.ensure_future(group.commit(version(f"k{i}"))) for i in range(3)]
            await sent.wait()
            writers += [asyncio.ensure_future(group.commit(version(f"late{i}"))) for i in range(2)]
            await asyncio.sleep(0)  # the late ones wait for the next statement
            committing(group).cancel()  # as a closing loop does
            await asyncio.sleep(0)
            finish.set()
            return await asyncio.gather(*writers, return_exceptions=True)

        results = run_in_a_loop_of_its_own(self, scenario)
        self.assertEqual([type(result) for result in results[:3]], [datetime.datetime] * 3)
        self.assertEqual([type(result) for result in results[3:]], [asyncio.CancelledError] * 2)

    def test_a_group_cancelled_before_it_began_cancels_its_writers(self) -> None:
        async def scenario() -> list[object]:
            sent: list[Version] = []

            async def commit_many(rows: list[Version]) -> list[datetime.datetime | None]:
                sent.extend(rows)
                return [row.updated for row in rows]

            group = CommitGroup(commit_many)
            writers = [asyncio.ensure_future(group.commit(version(f"k{i}"))) for i in range(3)]
            await asyncio.sleep(0)  # they have joined; the group's task has not run yet
            committing(group).cancel()
            results: list[object] = [*await asyncio.gather(*writers, return_exceptions=True)]
            self.assertEqual(sent, [])
            # The next writer starts a group again.
            results.append(await group.commit(version("next")))
            return results

        results = run_in_a_loop_of_its_own(self, scenario)
        self.assertEqual([type(result) for result in results[:3]], [asyncio.CancelledError] * 3)
        self.assertIsInstance(results[3], datetime.datetime)


def version(key: str) -> Version:
    return Version(key, b"x", 1, "0" * 64, None, datetime.datetime.now(datetime.UTC))


def committing(group: CommitGroup) -> asyncio.Future[None]:
    """Return the task that commits group's rows, in the only event loop it has run in."""
    (queue,) = group._queues.values()
    assert queue.committing is not None
    return queue.committing


def run_in_a_loop_of_its_own(
    test: SimpleTestCase, scenario: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """Return what scenario returns, run in an event loop of its own; fail if it hangs."""
    outcome: list[T] = []
    thread = threading.Thread(
        target=lambda: outcome.append(asyncio.run(scenario())),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    test.assertFalse(thread.is_alive(), "a writer is still waiting after 10 s")
    test.assertEqual(len(outcome), 1, "the scenario raised")
    return outcome[0]
