"""Concurrency and cancellation through real servers: no 5xx, no lost or broken blob.

Each class serves a site under uvicorn on a fresh database of its own: the
host site of :mod:`tests.hostsite` (a new project's settings; Django's own ASGI
handler, or blobstore's short path) on SQLite or PostgreSQL, or the demo site
on PostgreSQL. Every scenario is bounded in time and in the number of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from django.test import SimpleTestCase

from blobstore.storage.chunked import CHUNK_SIZE
from tests.races_site import RaceSite, failure, postgres_database, sha256

pytestmark = pytest.mark.heavy  # once per test run: see tests/conftest.py

MIB = 1024 * 1024
ROUNDS, WIDTH, SHARED_KEYS = 5, 32, 2
RACE_SECONDS, RACE_CLIENTS = 5.0, 8
REPLACES, LOCK_SECONDS, IMPATIENCE = 4, 3.0, 1.5

EXPECTED = {"PUT": {200, 201}, "DELETE": {204}}

# Chunk versions that no blob row names: a write or delete that ended left them behind.
ORPHAN_VERSIONS = """
    SELECT count(DISTINCT version) FROM blobstore_blobchunk
    WHERE version NOT IN (SELECT version FROM blobstore_blob WHERE version IS NOT NULL)
"""


class RaceTestCase(SimpleTestCase):
    """One site for the class: app serving settings_module, on PostgreSQL or on SQLite."""

    settings_module = "tests.hostsite.settings"
    app = "tests.hostsite.asgi:application"
    factory = False
    workers = 1
    on_postgres = False
    site: RaceSite
    _resources: contextlib.ExitStack

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._resources = contextlib.ExitStack()
        try:
            url = cls._resources.enter_context(postgres_database()) if cls.on_postgres else None
            cls.site = RaceSite(
                cls.settings_module, cls.app, factory=cls.factory, workers=cls.workers,
                database_url=url,
            )  # fmt: skip
            cls._resources.callback(cls.site.stop)
            cls.site.start()
        except BaseException:
            cls._resources.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls._resources.close()
        super().tearDownClass()

    @property
    def database_url(self) -> str:
        """The URL of the site's PostgreSQL database."""
        assert self.site.database_url is not None
        return self.site.database_url

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[httpx.AsyncClient]:
        """Yield a client of the site; if the server is found dead, fail with how it died."""
        try:
            async with self.site.client() as http:
                yield http
        except httpx.TransportError:
            self.assertIsNone(self.site.death())
            raise

    async def read_back(self, http: httpx.AsyncClient, key: str) -> str:
        """Return the sha256 of key's blob as GET returns it, or the status and error."""
        answer = await http.get(key)
        if answer.status_code != 200:
            return f"GET {answer.status_code} {failure(answer)}"
        return sha256(answer.content)


class NewProjectSQLiteWriteTests(RaceTestCase):
    """A new project's SQLite defaults, Django's own ASGI handler, one worker."""

    async def test_concurrent_writes_answer_no_5xx(self) -> None:
        await self.assert_concurrent_writes(1024, rounds=ROUNDS, width=WIDTH)

    async def test_concurrent_chunked_writes_answer_no_5xx(self) -> None:
        await self.assert_concurrent_writes(CHUNK_SIZE + 1024, rounds=2, width=WIDTH)

    async def assert_concurrent_writes(self, size: int, *, rounds: int, width: int) -> None:
        """PUT width blobs of size bytes at once, rounds times: all stored, and read back so."""
        statuses: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        expected: dict[str, set[str]] = {}
        async with asyncio.timeout(60), self.serving() as http:
            for round_ in range(rounds):
                # Most keys are new; a few are written by several requests at once.
                # Under the size: the class's other test writes the same database.
                keys = [
                    f"{size}/shared/{i % SHARED_KEYS}"
                    if i < 2 * SHARED_KEYS
                    else f"{size}/load/{round_}/{i}"
                    for i in range(width)
                ]
                bodies = [os.urandom(size) for _ in keys]
                answers = await asyncio.gather(
                    *(http.put(key, content=body) for key, body in zip(keys, bodies, strict=True))
                )
                # Any of this round's writers of a shared key may have the last word.
                expected.update((key, set()) for key in keys)
                for key, body, answer in zip(keys, bodies, answers, strict=True):
                    statuses[answer.status_code] += 1
                    if answer.status_code in EXPECTED["PUT"]:
                        expected[key].add(sha256(body))
                    else:
                        errors[f"{answer.status_code} {failure(answer)}"] += 1
            unread = {}
            for key, digests in expected.items():
                got = await self.read_back(http, key)
                if digests and got not in digests:
                    unread[key] = got
        print(f"\n{type(self).__name__}: {rounds * width} writes of {size} bytes: {dict(statuses)}")
        self.assertEqual(
            (errors, unread),
            (Counter(), {}),
            f"{sum(errors.values())} of {rounds * width} writes failed ({dict(statuses)}); "
            f"{len(unread)} of {len(expected)} keys do not read back as written",
        )
        # Of the writers that created a key at once, one heard 201.
        self.assertEqual(statuses[201], len(expected), dict(statuses))


class NewProjectShortPathSQLiteWriteTests(NewProjectSQLiteWriteTests):
    """The same, with blobstore.asgi.get_asgi_application() as the site's application."""

    app = "blobstore.asgi:get_asgi_application"
    factory = True


class PostgreSQLPutDeleteRaceTests(RaceTestCase):
    """Writers and deleters of one key on PostgreSQL, two uvicorn workers, Django's handler."""

    workers = 2
    on_postgres = True

    async def test_put_and_delete_race_on_one_key(self) -> None:
        key = "race/one"
        small = [os.urandom(1024) for _ in range(3)]
        chunked = [os.urandom(random.randint(2 * MIB, 3 * MIB)) for _ in range(3)]
        digests = {sha256(body) for body in small + chunked}
        answers: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        end = loop.time() + RACE_SECONDS

        async def client(http: httpx.AsyncClient, rng: random.Random) -> None:
            while loop.time() < end:
                # As many DELETEs as PUTs of either size.
                bodies = rng.choice((small, chunked, None))
                if bodies is None:
                    method, answer = "DELETE", await http.delete(key)
                else:
                    method, answer = "PUT", await http.put(key, content=rng.choice(bodies))
                answers[f"{method} {answer.status_code}"] += 1
                if answer.status_code not in EXPECTED[method]:
                    errors[f"{method} {answer.status_code} {failure(answer)}"] += 1

        async with asyncio.timeout(60), self.serving() as http:
            await asyncio.gather(*(client(http, random.Random(n)) for n in range(RACE_CLIENTS)))
            async with await psycopg.AsyncConnection.connect(self.database_url) as database:
                orphans = await self.orphan_versions(database)
                rows = await (
                    await database.execute("SELECT key, sha256 FROM blobstore_blob")
                ).fetchall()
            broken = {}
            for row_key, row_sha256 in rows:
                got = await self.read_back(http, row_key)
                if got != row_sha256 or got not in digests:
                    broken[row_key] = f"row says {row_sha256}, GET gives {got}"
        total = sum(answers.values())
        print(f"\n{type(self).__name__}: {total} requests {dict(answers)}, {orphans} orphans")
        self.assertEqual(
            (errors, orphans, broken),
            (Counter(), 0, {}),
            f"in {total} requests ({dict(answers)}): errors {dict(errors)}, "
            f"{orphans} orphan chunk versions, broken blobs {broken}",
        )

    @staticmethod
    async def orphan_versions(database: psycopg.AsyncConnection[tuple[int]]) -> int:
        """Return the number of orphan chunk versions once writes in flight have ended."""
        count = 0
        for _ in range(10):
            row = await (await database.execute(ORPHAN_VERSIONS)).fetchone()
            assert row is not None
            count = row[0]
            if count == 0:
                break
            await asyncio.sleep(0.3)
        return count


class DemoSitePostgreSQLPutDeleteRaceTests(PostgreSQLPutDeleteRaceTests):
    """The same through the demo site, whose asgi.py serves the API on the short path."""

    settings_module = "project.settings"
    app = "project.asgi:application"


class NewProjectSQLiteCancelledReplaceTests(RaceTestCase):
    """A replace whose client gives up while the database is locked: old blob or new, whole.

    Django's own ASGI handler cancels the view when its client hangs up.
    """

    async def test_cancelled_replace_keeps_a_whole_blob(self) -> None:
        outcomes: Counter[str] = Counter()
        async with asyncio.timeout(60), self.site.client() as http:
            for attempt in range(REPLACES):
                key = f"cancelled/{attempt}"
                try:
                    outcome = await self.cancelled_replace(http, key)
                    outcomes[outcome.replace(repr(key), "<key>")] += 1
                except httpx.TransportError:
                    if self.site.death() is None:
                        raise
                    outcomes["the server died"] += 1
                    break
        print(f"\n{type(self).__name__}: {outcomes.total()} cancelled replaces: {dict(outcomes)}")
        self.assertEqual(
            outcomes.keys() - {"old blob whole", "new blob whole"},
            set(),
            f"outcomes of {outcomes.total()} cancelled replaces: {dict(outcomes)}\n"
            f"{self.site.death() or ''}",
        )

    async def cancelled_replace(self, http: httpx.AsyncClient, key: str) -> str:
        """Replace key's blob with an impatient client while it is locked; return the outcome."""
        old, new = os.urandom(5 * MIB), os.urandom(5 * MIB)
        stored = await http.put(key, content=old)
        self.assertIn(stored.status_code, (200, 201), stored.text)
        loop = asyncio.get_running_loop()
        async with self.locked(key):
            unlock_at = loop.time() + LOCK_SECONDS
            # A client of its own, closed as it gives up: the server sees it hang up.
            try:
                async with self.site.client(timeout=IMPATIENCE) as impatient:
                    answer = await impatient.put(key, content=new)
            except httpx.TimeoutException:
                pass
            else:
                return f"PUT was not kept waiting: {answer.status_code} {failure(answer)}"
            await asyncio.sleep(unlock_at - loop.time())
        return await self.settled(http, key, {sha256(old): "old", sha256(new): "new"})

    async def settled(self, http: httpx.AsyncClient, key: str, names: dict[str, str]) -> str:
        """Return what GET says of key once two reads in a row agree (at most 6 s)."""
        seen: list[str] = []
        for _ in range(20):
            await asyncio.sleep(0.3)
            seen.append(await self.read_back(http, key))
            if len(seen) > 1 and seen[-1] == seen[-2]:
                break
        errors = [got for got in seen if got.startswith("GET 5")]
        if errors and seen[-1] in names:
            return f"{errors[0]}, then the {names[seen[-1]]} blob"
        return f"{names[seen[-1]]} blob whole" if seen[-1] in names else seen[-1]

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[None]:
        """Hold SQLite's write lock from another connection, as another process would."""
        database = sqlite3.connect(
            self.site.sqlite_path, isolation_level=None, check_same_thread=False
        )
        try:
            await asyncio.to_thread(database.execute, "BEGIN IMMEDIATE")
            yield
            database.execute("COMMIT")
        finally:
            database.close()


class PostgreSQLCancelledReplaceTests(NewProjectSQLiteCancelledReplaceTests):
    """The same on PostgreSQL, with a row lock on the blob held by another connection."""

    on_postgres = True

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[None]:
        """Hold a lock on key's row from another connection."""
        connecting = psycopg.AsyncConnection.connect(self.database_url)
        async with await connecting as database, database.transaction():
            cursor = await database.execute(
                "SELECT id FROM blobstore_blob WHERE key = %s FOR UPDATE", [key]
            )
            self.assertIsNotNone(await cursor.fetchone())
            yield
