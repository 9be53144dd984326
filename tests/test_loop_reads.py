"""Work kept off threads on a server's event loop: SQLite reads on the loop, closes in groups.

These run their own event loop with ``asyncio.run``, as a server does, not
under ``async_to_sync`` as Django's async test methods are, which must (and
here do) keep to the thread of the caller's connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import httpx
import psycopg
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import Group, Permission, User
from django.core.signals import request_finished
from django.db import close_old_connections, connections, transaction
from django.test import SimpleTestCase, TestCase, TransactionTestCase, override_settings
from django.utils import timezone

from blobstore.api import asgi
from blobstore.asgi import get_asgi_application
from blobstore.models import APIToken
from blobstore.storage import ORMStorage, SQLiteStorage, storages
from blobstore.storage.loop import (
    LOOP_CONNECTIONS,
    REUSED_RESULTS,
    LoopReader,
    _map_index,
    _Pipeline,
    for_sync_caller,
    loop_reader,
    postgresql_reader,
)
from blobstore.storage.statement import with_placeholders
from tests.test_cancellation import drive

T = TypeVar("T")


def sqlite_file(directory: str, journal_mode: str) -> str:
    path = str(Path(directory) / f"{journal_mode}.sqlite3")
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
        db.execute("INSERT INTO t VALUES ('a', x'01')")
    db.close()
    return path


class LoopReaderTests(SimpleTestCase):
    def setUp(self) -> None:
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        self.directory = scratch.name
        self.reader = LoopReader()

    def test_a_wal_file_is_read_and_later_commits_are_seen(self) -> None:
        path = sqlite_file(self.directory, "wal")
        select = "SELECT v FROM t WHERE k = ?"
        self.assertEqual(self.reader.fetchall(path, select, ("a",)), [(b"\x01",)])
        with sqlite3.connect(path) as writer:
            writer.execute("UPDATE t SET v = x'02' WHERE k = 'a'")
        writer.close()
        self.assertEqual(self.reader.fetchall(path, select, ("a",)), [(b"\x02",)])

    def test_the_loops_connection_cannot_write(self) -> None:
        path = sqlite_file(self.directory, "wal")
        self.assertIsNone(self.reader.fetchall(path, "DELETE FROM t", ()))
        self.assertEqual(self.reader.fetchall(path, "SELECT count(*) FROM t", ()), [(1,)])

    def test_a_file_without_wal_is_left_to_the_callers_connection(self) -> None:
        # Without WAL a reader waits for writers, which on the loop would stall every request.
        path = sqlite_file(self.directory, "delete")
        self.assertIsNone(self.reader.fetchall(path, "SELECT v FROM t", ()))

    def test_a_missing_file_is_not_created(self) -> None:
        path = Path(self.directory) / "missing.sqlite3"
        self.assertIsNone(self.reader.fetchall(str(path), "SELECT 1", ()))
        self.assertFalse(path.exists())

    def test_code_run_for_a_synchronous_caller_does_not_read_on_its_loop(self) -> None:
        path = sqlite_file(self.directory, "wal")

        async def read() -> tuple[bool, Any]:
            return for_sync_caller(), self.reader.fetchall(path, "SELECT v FROM t", ())

        self.assertEqual(async_to_sync(read)(), (True, None))
        self.assertEqual(asyncio.run(read()), (False, [(b"\x01",)]))


class ReusedResultTests(SimpleTestCase):
    """Results kept while the file is unchanged, as the header of its WAL index tells."""

    SELECT = "SELECT v FROM t WHERE k = ?"
    mapped = True
    """Whether the reader reads the WAL index's header rather than PRAGMA data_version."""

    def setUp(self) -> None:
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        self.path = sqlite_file(scratch.name, "wal")
        self.reader = self.opened_reader()
        self.conversions = 0

    def opened_reader(self) -> LoopReader:
        reader = LoopReader()
        self.assertIsNotNone(reader.fetchall(self.path, "SELECT 1", ()))  # opens it
        opened = reader._loop_reader(self.path)
        assert opened is not None
        self.assertIsNotNone(opened.index)
        if not self.mapped:
            opened.index = None
        return reader

    def convert(self, rows: list[Any]) -> list[Any]:
        self.conversions += 1
        return [value for (value,) in rows]

    def read(self, key: str = "a") -> Any:
        return self.reader.fetchall_reused(self.path, self.SELECT, (key,), self.convert)

    def commit(self, sql: str) -> None:
        with sqlite3.connect(self.path) as writer:
            writer.execute(sql)
        writer.close()

    def statements_of(self, read: Callable[[], object]) -> list[str]:
        """Return the statements that the reader's connection runs in read()."""
        connection = self.reader._loop_reader(self.path).connection  # type: ignore[union-attr]
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        try:
            read()
        finally:
            connection.set_trace_callback(None)
        return statements

    def test_a_result_is_kept_until_another_connection_commits(self) -> None:
        self.assertEqual([self.read(), self.read(), self.read("b")], [[b"\x01"], [b"\x01"], []])
        self.assertEqual(self.conversions, 2)  # once for each key
        self.commit("UPDATE t SET v = x'02' WHERE k = 'a'")
        self.assertEqual([self.read(), self.read()], [[b"\x02"], [b"\x02"]])
        self.assertEqual(self.conversions, 3)
        self.commit("INSERT INTO t VALUES ('b', x'03')")  # any change, to any row
        self.assertEqual([self.read("b"), self.read()], [[b"\x03"], [b"\x02"]])
        self.assertEqual(self.conversions, 5)

    def test_a_kept_result_costs_no_statement_but_the_version(self) -> None:
        self.read()
        version = [] if self.mapped else ["PRAGMA data_version"]
        self.assertEqual(self.statements_of(self.read), version)
        self.commit("UPDATE t SET v = x'02' WHERE k = 'a'")
        self.assertEqual(len(self.statements_of(self.read)), len(version) + 1)

    def test_a_checkpoint_of_the_wal_keeps_results_right(self) -> None:
        self.read()
        with sqlite3.connect(self.path) as writer:
            writer.execute("UPDATE t SET v = x'02' WHERE k = 'a'")
            writer.commit()
            writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next commit restarts the WAL
            writer.execute("UPDATE t SET v = x'03' WHERE k = 'a'")
        writer.close()
        self.assertEqual(self.read(), [b"\x03"])

    def test_a_commit_while_a_result_is_read_is_seen_by_the_next_read(self) -> None:
        # With the index mapped, the header is read before the SELECT with no
        # statement of its own: a commit as the SELECT begins is the one between.
        moments = ["SELECT"] if self.mapped else ["PRAGMA data_version", "SELECT"]
        for number, statement in enumerate(moments, start=2):
            with self.subTest(commit_as=statement):
                self.reader = self.opened_reader()  # nothing kept: the SELECT runs
                update = f"UPDATE t SET v = x'0{number}' WHERE k = 'a'"
                committed = self.commit_as_it_begins(statement, update)
                self.read()
                self.assertEqual(len(committed), 1)
                self.assertEqual(self.read(), [bytes([number])])

    def commit_as_it_begins(self, statement: str, sql: str) -> list[str]:
        """Commit sql on another connection as the reader's first such statement begins."""
        connection = self.reader._loop_reader(self.path).connection  # type: ignore[union-attr]
        committed: list[str] = []

        def commit(started: str) -> None:
            if started.startswith(statement) and not committed:
                self.commit(sql)
                committed.append(started)

        connection.set_trace_callback(commit)
        return committed

    def test_at_most_so_many_results_are_kept(self) -> None:
        for number in range(REUSED_RESULTS + 1):
            self.read(str(number))
        kept = self.reader._loop_reader(self.path).results  # type: ignore[union-attr]
        self.assertEqual(len(kept), 1)

    def test_code_run_for_a_synchronous_caller_reads_through_its_own_connection(self) -> None:
        async def read() -> Any:
            return self.read()

        self.assertIsNone(async_to_sync(read)())
        self.assertEqual(asyncio.run(read()), [b"\x01"])


class DataVersionReusedResultTests(ReusedResultTests):
    """The same where the WAL index is not mapped (another VFS): PRAGMA data_version tells."""

    mapped = False

    def test_an_index_that_is_not_a_file_is_not_mapped(self) -> None:
        self.assertIsNone(_map_index(str(Path(self.path).with_name("none.sqlite3"))))


class ORMStorageLoopReadTests(TransactionTestCase):
    databases = {"default"}

    def test_reads_on_a_servers_loop_see_every_commit(self) -> None:
        storage = ORMStorage()

        async def scenario() -> list[Any]:
            seen: list[Any] = [await storage.get("k")]
            await storage.set("k", b"one")
            seen += [await storage.get("k"), await storage.exists("k")]
            await storage.set("k", b"two")
            stream = await storage.stream("k")
            assert stream is not None
            async with stream:
                seen.append(await stream.read())
            await storage.evict("k")
            seen += [await storage.get("k"), await storage.stat("k"), await read_on_the_loop()]
            await close_connections()
            return seen

        self.assertEqual(asyncio.run(scenario()), [None, b"one", True, b"two", None, None, True])

    def test_a_read_cancelled_at_each_await_leaves_the_loops_connection_usable(self) -> None:
        storage = ORMStorage()

        async def scenario() -> tuple[int, list[Any]]:
            await storage.set("k", b"one")
            _, suspensions = await drive(storage.get("k"), None)
            after = []
            for step in range(1, suspensions + 1):
                cancelled, reached = await drive(storage.get("k"), step)
                # As in test_cancellation: work that ends early may save a suspension.
                after.append((cancelled or reached < step, await storage.get("k")))
            await close_connections()
            return suspensions, after

        suspensions, after = asyncio.run(scenario())
        if connections["default"].vendor == "sqlite":
            self.assertEqual(suspensions, 0, "a read on SQLite's loop connection never waits")
        else:
            self.assertGreater(suspensions, 0)
        self.assertEqual(after, [(True, b"one")] * suspensions)


class PlaceholderTests(SimpleTestCase):
    def test_each_database_gets_its_own_placeholders_and_a_literal_percent_sign(self) -> None:
        sql = "a = %s AND b LIKE 'x%%' AND c = %s"
        self.assertEqual(with_placeholders(sql, lambda _: "?"), "a = ? AND b LIKE 'x%' AND c = ?")
        numbered = with_placeholders(sql, lambda number: f"${number}")
        self.assertEqual(numbered, "a = $1 AND b LIKE 'x%' AND c = $2")


class PostgreSQLLoopConnectionTests(TransactionTestCase):
    databases = {"postgres"}

    def test_concurrent_reads_open_a_few_connections_and_see_every_commit(self) -> None:
        storage = ORMStorage(using="postgres")

        async def scenario() -> tuple[int, list[Any], int, list[Any]]:
            await storage.set("k", b"one")
            for _ in range(5):
                await storage.get("k")
            one_at_a_time = len(postgresql_reader.connections())
            together = await asyncio.gather(*(storage.get("k") for _ in range(32)))
            opened = len(postgresql_reader.connections())
            await storage.set("k", b"two")
            after = await asyncio.gather(*(storage.get("k") for _ in range(32)))
            await postgresql_reader.close()
            await sync_to_async(connections.close_all)()
            return one_at_a_time, together, opened, after

        one_at_a_time, together, opened, after = asyncio.run(scenario())
        self.assertEqual(one_at_a_time, 1)
        self.assertEqual(together, [b"one"] * 32)
        self.assertGreater(opened, 1)
        self.assertLessEqual(opened, LOOP_CONNECTIONS)
        self.assertEqual(after, [b"two"] * 32)

    def test_reads_given_up_while_others_wait_leave_each_read_its_own_rows(self) -> None:
        wrapper = connections["postgres"]
        select = "SELECT $1::text"

        async def scenario() -> tuple[list[Any], list[Any], list[bool]]:
            # As many at once open every connection the loop may: none opens below.
            await asyncio.gather(
                *(postgresql_reader.fetchall(wrapper, select, ["warm"]) for _ in range(12))
            )
            self.assertEqual(len(postgresql_reader.connections()), LOOP_CONNECTIONS)
            reads = [
                asyncio.ensure_future(postgresql_reader.fetchall(wrapper, select, [str(n)]))
                for n in range(12)
            ]
            await asyncio.sleep(0)  # each read is sent, and waits for its rows
            for read in reads[::2]:
                read.cancel()
            kept = await asyncio.gather(*reads[1::2])
            after = [await postgresql_reader.fetchall(wrapper, select, ["after"])]
            pipelines = [await opening for opening in postgresql_reader.connections()]
            broken = [pipeline is None or pipeline.broken for pipeline in pipelines]
            await close_connections()
            return kept, after, broken

        kept, after, broken = asyncio.run(within_seconds(20, scenario()))
        self.assertEqual(kept, [[(str(n),)] for n in range(1, 12, 2)])
        self.assertEqual(after, [[("after",)]])
        self.assertFalse(any(broken), "no read fell back to Django's connection")

    def test_a_failed_statement_or_a_terminated_backend_gives_way_to_a_new_connection(
        self,
    ) -> None:
        wrapper = connections["postgres"]
        select = "SELECT $1::text"

        async def pipeline_pid() -> int:
            (opening,) = postgresql_reader.connections()
            return int((await opening).pgconn.backend_pid)

        async def scenario() -> list[Any]:
            seen: list[Any] = [await postgresql_reader.fetchall(wrapper, select, ["one"])]
            first = await pipeline_pid()
            seen.append(await postgresql_reader.fetchall(wrapper, "SELECT 1 / $1", [0]))
            seen.append(await postgresql_reader.fetchall(wrapper, select, ["two"]))
            second = await pipeline_pid()
            await sync_to_async(terminate, thread_sensitive=False)(second)
            # The first read after it is told, and leaves it; the next opens another.
            seen.append(await postgresql_reader.fetchall(wrapper, select, ["three"]))
            seen.append(await postgresql_reader.fetchall(wrapper, select, ["four"]))
            third = await pipeline_pid()
            await close_connections()
            seen.append(len({first, second, third}))
            return seen

        self.assertEqual(
            asyncio.run(within_seconds(20, scenario())),
            [[("one",)], None, [("two",)], None, [("four",)], 3],
        )

    def test_statements_are_prepared_where_the_sites_options_ask_for_it(self) -> None:
        prepared = "SELECT count(*)::int FROM pg_prepared_statements WHERE name LIKE $1"

        async def count_prepared(options: dict[str, Any]) -> list[Any]:
            params = psycopg_params(**options)
            connection = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            pipeline = _Pipeline(connection)
            try:
                return [await pipeline.fetchall(prepared, ["blobstore%"]) for _ in range(2)]
            finally:
                await pipeline.close()

        # Django's default: none (PgBouncer in transaction mode could not keep them).
        self.assertEqual(asyncio.run(count_prepared({})), [[(0,)], [(0,)]])
        # Prepared before it runs, the statement counts itself.
        prepared_after_5 = asyncio.run(count_prepared({"prepare_threshold": 5}))
        self.assertEqual(prepared_after_5, [[(1,)], [(1,)]])


async def read_on_the_loop() -> bool:
    """Return whether this event loop has read the default database on a connection of its own."""
    settings = connections.settings["default"]
    if settings["ENGINE"] == "django.db.backends.sqlite3":
        return loop_reader._local.__dict__.get("opened", {}).get(str(settings["NAME"])) is not None
    opened = postgresql_reader.connections()
    return any(task.done() and task.result() is not None for task in opened)


async def within_seconds(seconds: float, scenario: Awaitable[T]) -> T:
    """Return what scenario gives, or raise TimeoutError: a read that never ends fails the test."""
    async with asyncio.timeout(seconds):
        return await scenario


def psycopg_params(**options: Any) -> dict[str, Any]:
    """Return psycopg's connection parameters for the postgres alias, with options."""
    params = {**connections["postgres"].get_connection_params(), **options}
    params.pop("cursor_factory", None)  # Django's own, a synchronous cursor
    return params


def terminate(pid: int) -> None:
    """End the PostgreSQL backend pid, as an administrator would, and wait until it is gone."""
    with psycopg.connect(**psycopg_params(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


async def close_connections() -> None:
    """Close this loop's connections and the statements' thread's, so the database can go."""
    await postgresql_reader.close()
    await sync_to_async(connections.close_all)()


class TokenLoopReadTests(TransactionTestCase):
    databases = {"default"}

    def test_a_token_is_looked_up_on_a_servers_loop_and_revocation_is_seen_at_once(self) -> None:
        user = User.objects.create_user("reader", password="pw")
        token, secret = APIToken.objects.create_token(user)

        async def holder() -> Any:
            found = await APIToken.objects.aactive_user(secret)
            self.assertTrue(await read_on_the_loop())
            await close_connections()
            return found

        found = asyncio.run(holder())
        self.assertEqual((found.pk, found.username, found.is_active), (user.pk, "reader", True))
        self.assertEqual(found.date_joined, user.date_joined)
        user.is_active = False
        user.save()
        self.assertIsNone(asyncio.run(holder()))
        user.is_active = True
        user.save()
        APIToken.objects.filter(pk=token.pk).update(revoked=timezone.now())
        self.assertIsNone(asyncio.run(holder()))

    def test_a_tokens_user_is_read_again_only_when_the_database_has_changed(self) -> None:
        user = User.objects.create_user("reader", password="pw")
        _, secret = APIToken.objects.create_token(user)
        statements: list[str] = []
        on_sqlite = connections["default"].vendor == "sqlite"

        async def look_up() -> list[Any]:
            first = await APIToken.objects.aactive_user(secret)
            path = str(connections["default"].settings_dict["NAME"])
            reader = loop_reader._loop_reader(path)
            self.assertEqual(reader is not None, on_sqlite)
            if reader is not None:
                reader.connection.set_trace_callback(statements.append)
            try:
                found = [first, await APIToken.objects.aactive_user(secret)]
                statements.append("-- a commit")
                await User.objects.filter(pk=user.pk).aupdate(first_name="Changed")
                found.append(await APIToken.objects.aactive_user(secret))
            finally:
                if reader is not None:
                    reader.connection.set_trace_callback(None)
            await close_connections()
            return found

        first, second, third = asyncio.run(look_up())
        self.assertEqual((first.pk, second.pk), (user.pk, user.pk))
        self.assertIsNot(first, second)  # a user of its own for each request
        self.assertEqual(third.first_name, "Changed")
        if on_sqlite:
            # Kept with no statement at all (the WAL index's header tells that
            # the file is unchanged), until the commit.
            self.assertEqual(statements[0], "-- a commit")
            self.assertEqual(len(statements), 2)
            self.assertIn("blobstore_apitoken", statements[1])
        else:
            self.assertEqual(statements, ["-- a commit"])  # read on connections of its own

    def test_a_tokens_permissions_are_read_on_a_servers_loop_and_changes_seen_at_once(
        self,
    ) -> None:
        user = User.objects.create_user("member", password="pw")
        _, secret = APIToken.objects.create_token(user)
        view, add = (Permission.objects.get(codename=name) for name in ("view_blob", "add_blob"))
        user.user_permissions.add(view)
        writers = Group.objects.create(name="writers")
        writers.permissions.add(add)
        user.groups.add(writers)

        async def held() -> set[str]:
            permissions = await APIToken.objects.aheld_permissions(secret)
            self.assertTrue(await read_on_the_loop())
            await close_connections()
            return permissions

        self.assertEqual(asyncio.run(held()), {"blobstore.view_blob", "blobstore.add_blob"})
        writers.permissions.clear()
        self.assertEqual(asyncio.run(held()), {"blobstore.view_blob"})
        user.user_permissions.clear()
        self.assertEqual(asyncio.run(held()), set())


class ORMStorageCallerTransactionTests(TestCase):
    def test_a_synchronous_callers_uncommitted_write_is_read_back(self) -> None:
        storage = ORMStorage()
        with transaction.atomic():
            async_to_sync(storage.set)("mine", b"not committed yet")
            self.assertEqual(async_to_sync(storage.get)("mine"), b"not committed yet")


class SQLiteStorageLoopReadTests(SimpleTestCase):
    def test_reads_on_the_loop_see_another_connections_commits(self) -> None:
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        path = Path(scratch.name) / "blobs.sqlite3"
        reader, writer = SQLiteStorage(path), SQLiteStorage(path)

        async def scenario() -> list[Any]:
            seen: list[Any] = [await reader.get("k")]
            await writer.set("k", b"one")
            seen += [await reader.get("k"), await reader.exists("k")]
            await writer.evict("k")
            seen.append(await reader.get("k"))
            await reader.close()
            await writer.close()
            return seen

        self.assertEqual(asyncio.run(scenario()), [None, b"one", True, None])
        self.assertIsNotNone(loop_reader._local.opened[str(path)])


@override_settings(BLOBSTORE_STORAGES={"default": {"BACKEND": "blobstore.storage.DictStorage"}})
class ResponseCloserTests(SimpleTestCase):
    REQUESTS = 24

    def setUp(self) -> None:
        request_finished.disconnect(close_old_connections)  # no database here
        self.addCleanup(request_finished.connect, close_old_connections)
        self.finished = 0
        request_finished.connect(self.count_finished)
        self.addCleanup(request_finished.disconnect, self.count_finished)

    def count_finished(self, **kwargs: Any) -> None:
        self.finished += 1

    def test_concurrent_responses_are_closed_in_few_hops_each_sending_request_finished(
        self,
    ) -> None:
        batches: list[int] = []
        close_all = asgi._close_all

        def recording(responses: list[Any]) -> list[Exception | None]:
            batches.append(len(responses))
            return close_all(responses)

        async def scenario() -> list[int]:
            await storages["default"].set("proxystore/k", b"blob")
            transport = httpx.ASGITransport(
                app=get_asgi_application(),  # type: ignore[arg-type]  # httpx: MutableMapping
                client=("127.0.0.1", 1),
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
                responses = await asyncio.gather(
                    *(http.get("/get", params={"key": "k"}) for _ in range(self.REQUESTS))
                )
            return [response.status_code for response in responses]

        with mock.patch.object(asgi, "_close_all", recording):
            statuses = asyncio.run(scenario())
        self.assertEqual(statuses, [200] * self.REQUESTS)
        self.assertEqual(self.finished, self.REQUESTS)
        self.assertEqual(sum(batches), self.REQUESTS)
        self.assertLess(len(batches), self.REQUESTS, f"one hop per response: {batches}")

    def test_a_failing_receiver_fails_its_own_request_only(self) -> None:
        failures = iter([RuntimeError("receiver failed")])

        def failing_once(**kwargs: Any) -> None:
            failure = next(failures, None)
            if failure is not None:
                raise failure

        request_finished.connect(failing_once)
        self.addCleanup(request_finished.disconnect, failing_once)

        async def scenario() -> list[Any]:
            await storages["default"].set("proxystore/k", b"blob")
            transport = httpx.ASGITransport(
                app=get_asgi_application(),  # type: ignore[arg-type]  # httpx: MutableMapping
                client=("127.0.0.1", 1),
                raise_app_exceptions=False,
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
                return await asyncio.gather(
                    *(http.get("/get", params={"key": "k"}) for _ in range(4)),
                    return_exceptions=True,
                )

        outcomes = asyncio.run(scenario())
        self.assertEqual([getattr(o, "status_code", None) for o in outcomes], [200] * 4)
        self.assertEqual(self.finished, 4)


class APIMatchTests(SimpleTestCase):
    def test_matches_follow_the_urlconf(self) -> None:
        scope = {"type": "http", "path": "/get"}
        self.assertIsNotNone(asgi.api_match(scope))
        with override_settings(ROOT_URLCONF="tests.test_loop_reads"):
            self.assertIsNone(asgi.api_match(scope))
        self.assertIsNotNone(asgi.api_match(scope))


urlpatterns: list[Any] = []
