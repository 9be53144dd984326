"""Small writes that come at once share a transaction, and each is answered once committed."""

from __future__ import annotations

import asyncio
import datetime

from django.db import DatabaseError
from django.test import TransactionTestCase

from blobstore.storage import ORMStorage
from blobstore.storage.chunked import Version


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
