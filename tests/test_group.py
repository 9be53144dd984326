"""Small writes that come at once share a transaction, and each is answered once committed."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

from asgiref.sync import async_to_sync
from django.db import DatabaseError, transaction
from django.test import TransactionTestCase

from blobstore.storage import ORMStorage
from blobstore.storage.chunked import Version
from blobstore.storage.orm import GROUP_LIMIT


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


class CommitGroupTests(TransactionTestCase):
    databases = {"default", "postgres"}

    async def test_concurrent_writes_share_few_transactions(self) -> None:
        for using in ("default", "postgres"):
            with self.subTest(using=using):
                storage = ORMStorage(using=using)
                groups = self.count_groups(storage)
                await asyncio.gather(*(storage.set(f"k{i}", b"%d" % i) for i in range(50)))
                self.assertEqual(sum(groups), 50)
                self.assertLess(len(groups), 50)
                self.assertEqual(await storage.get("k7"), b"7")
                await asyncio.gather(*(storage.set("same", b"%d" % i) for i in range(20)))
                self.assertEqual(await storage.get("same"), b"19")  # the last writer wins

    async def test_writers_of_one_key_in_a_group_commit_as_if_in_turn(self) -> None:
        for using in ("default", "postgres"):
            with self.subTest(using=using):
                storage = ORMStorage(using=using)
                groups = self.count_groups(storage)
                written = await asyncio.gather(
                    *(storage.write("one", one_piece(b"%d" % i)) for i in range(10))
                )
                infos = [info for info in written if info is not None]
                self.assertEqual(len(infos), 10)
                self.assertLess(len(groups), 10)  # some of them shared a statement
                # The first to commit created the key; the others replaced it.
                first = min(infos, key=lambda info: info.updated)
                self.assertEqual([info.created for info in infos], [first.updated] * 10)
                self.assertEqual(await storage.stat("one"), max(infos, key=lambda i: i.updated))

    async def test_a_group_is_at_most_the_limit(self) -> None:
        for using in ("default", "postgres"):
            with self.subTest(using=using):
                storage = ORMStorage(using=using)
                groups = self.count_groups(storage)
                count = 3 * GROUP_LIMIT
                await asyncio.gather(*(storage.set(f"k{i}", b"%d" % i) for i in range(count)))
                self.assertEqual(sum(groups), count)
                self.assertLessEqual(max(groups), GROUP_LIMIT)
                self.assertEqual(await storage.get(f"k{count - 1}"), b"%d" % (count - 1))

    def test_a_group_inside_the_callers_transaction_rolls_back_with_it(self) -> None:
        for using in ("default", "postgres"):
            with self.subTest(using=using):
                storage = ORMStorage(using=using)
                with self.assertRaises(ZeroDivisionError), transaction.atomic(using=using):
                    async_to_sync(storage.set)("undone", b"x")
                    self.assertEqual(async_to_sync(storage.get)("undone"), b"x")
                    1 / 0  # noqa: B018
                self.assertIsNone(async_to_sync(storage.get)("undone"))

    def count_groups(self, storage: ORMStorage) -> list[int]:
        """Record the size of each group that storage commits."""
        groups: list[int] = []
        commit_many = storage._upsert_group

        async def counted(rows: list[Version]) -> list[datetime.datetime | None]:
            groups.append(len(rows))
            return await commit_many(rows)

        storage._group.commit_many = counted
        return groups

    async def test_a_failed_group_fails_each_of_its_writers(self) -> None:
        storage = ORMStorage()

        async def failing(rows: list[Version]) -> list[object]:
            raise DatabaseError("the disk is gone")

        storage._group.commit_many = failing  # type: ignore[assignment]
        results = await asyncio.gather(
            *(storage.set(f"k{i}", b"x") for i in range(5)), return_exceptions=True
        )
        self.assertEqual([type(result) for result in results], [DatabaseError] * 5)
