"""Reads of committed rows on the event loop, with no hop to a connection's thread.

A read of one row by its key takes the database microseconds; a hop to the
thread that owns a connection (Django's, aiosqlite's) and back costs the
event loop far more, and under load that thread waits for the loop's GIL
besides. So a server's reads run on the loop itself:

- SQLite in WAL mode, where a reader never waits for a writer: on a
  read-only connection of the loop's thread (:class:`LoopReader`), called
  synchronously;
- PostgreSQL with psycopg 3: on async connections of the loop's own
  (:class:`PostgreSQLLoopReader`, up to :data:`LOOP_CONNECTIONS`), in autocommit.

Either sees committed rows only, so it is used only where nothing else could
be seen: not from code that ``async_to_sync`` runs for a synchronous caller,
whose thread's connection may be inside a transaction (a ``TestCase``,
``transaction.atomic()``), and whose event loop lives for one call only.
Where a reader may not read, or meets any error, it answers None and the
caller reads through Django's connection as before (which reports the error).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import os
import pathlib
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import AsyncToSync

if TYPE_CHECKING:
    import psycopg
    from django.db.backends.base.base import BaseDatabaseWrapper
    from psycopg.abc import Transformer


def for_sync_caller() -> bool:
    """Return whether this code runs under async_to_sync, for a synchronous caller."""
    return getattr(AsyncToSync.executors, "current", None) is not None


_Rows = TypeVar("_Rows")

WAL_INDEX_HEADER = 48
"""The bytes of the header at the start of a WAL index, one of its two copies."""

REUSED_RESULTS = 256
"""The most results a thread keeps of one file for :meth:`LoopReader.fetchall_reused`."""


class LoopReader:
    """A read-only connection per thread to SQLite files in WAL mode."""

    def __init__(self) -> None:
        self._local = threading.local()

    def fetchall(self, path: str, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """Return the rows of sql on the file at path, or None where the loop may not read."""
        return self._read(path, lambda reader: reader.connection.execute(sql, params).fetchall())

    def fetchall_reused(
        self, path: str, sql: str, params: Sequence[Any], convert: Callable[[list[Any]], _Rows]
    ) -> _Rows | None:
        """Return convert(rows of sql), kept while no commit changes the file; or None as fetchall.

        For small results read on most requests (an API token's user): until
        the file changes, their rows cost a look at the header of its WAL
        index (or, where that is not mapped, at SQLite's ``data_version``).
        The result is shared: callers must not change it.
        """
        return self._read(path, lambda reader: reader.reused(sql, tuple(params), convert))

    def _read(self, path: str, read: Callable[[_WALReader], _Rows]) -> _Rows | None:
        """Return what read gives on the file's reader, or None where the loop may not read."""
        reader = self._loop_reader(path)
        if reader is None:
            return None
        try:
            return read(reader)
        except sqlite3.Error:
            return None

    def _loop_reader(self, path: str) -> _WALReader | None:
        if for_sync_caller():
            return None
        opened: dict[str, _WALReader | None] = self._local.__dict__.setdefault("opened", {})
        if path not in opened:
            connection = _open_wal(path)
            opened[path] = None if connection is None else _WALReader(connection, _map_index(path))
        return opened[path]


@dataclass(eq=False)
class _WALReader:
    """A read-only connection to one file, and the results it keeps while the file is unchanged."""

    connection: sqlite3.Connection
    index: mmap.mmap | None
    """The start of the file's WAL index (its ``-shm`` file), mapped; None where it is not."""
    version: bytes | int | None = None
    results: dict[tuple[str, tuple[Any, ...]], Any] = field(default_factory=dict)

    def reused(
        self, sql: str, params: tuple[Any, ...], convert: Callable[[list[Any]], _Rows]
    ) -> _Rows:
        # Read before the rows, the version can only be older than they are:
        # a commit in between drops them at the next call.
        version = self.data_version()
        if version != self.version:
            self.results.clear()
            self.version = version
        key = (sql, params)
        if key not in self.results:
            if len(self.results) >= REUSED_RESULTS:
                self.results.clear()
            self.results[key] = convert(self.connection.execute(sql, params).fetchall())
        result: _Rows = self.results[key]
        return result

    def data_version(self) -> bytes | int:
        """Return a value that changes whenever another connection commits to the file."""
        if self.index is None:
            (version,) = self.connection.execute("PRAGMA data_version").fetchone()
            return version  # type: ignore[no-any-return]
        # Every commit rewrites the WAL index's header, which SQLite's own
        # readers compare to learn whether the file changed. Read from memory,
        # it keeps the GIL, where a statement hands it to any thread that
        # waits (the closing of responses) and waits to get it back: a
        # request's slowest part.
        return self.index[:WAL_INDEX_HEADER]


def _open_wal(path: str) -> sqlite3.Connection | None:
    """Return a read-only connection to the file at path, or None unless it is in WAL mode."""
    try:
        uri = f"{pathlib.Path(path).absolute().as_uri()}?mode=rw"  # never a new, empty file
        # A short busy timeout: WAL readers wait only while a file is being recovered.
        reader = sqlite3.connect(uri, uri=True, timeout=0.1, isolation_level=None)
        (mode,) = reader.execute("PRAGMA journal_mode").fetchone()
        reader.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        return None
    if str(mode).lower() != "wal":
        # Without WAL a reader waits for writers: on the loop it would stall every request.
        reader.close()
        return None
    return reader


def _map_index(path: str) -> mmap.mmap | None:
    """Return the header of the WAL index of the file at path, mapped read-only; or None.

    The index is the ``-shm`` file beside the database (https://sqlite.org/walformat.html),
    which SQLite neither shrinks nor removes while a connection (the loop's
    own) has it open.
    """
    try:
        with open(f"{os.path.realpath(path)}-shm", "rb") as index:
            return mmap.mmap(index.fileno(), WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None  # not a file (another VFS) or not there: data_version tells instead


LOOP_CONNECTIONS = 4
"""The most connections an event loop reads a PostgreSQL database on."""


@dataclass(eq=False)
class _Slot:
    """One of a loop's pipelines to a database, as it opens, and its reads under way."""

    opening: asyncio.Task[_Pipeline | None]
    reads: int = 0


class PostgreSQLLoopReader:
    """Async psycopg connections per event loop and database, opened as reads need them.

    Each connection is a pipeline (:class:`_Pipeline`): reads go out at once
    and their results come back in order. A read goes to the connection with
    the fewest under way, and while every one has some, a new one opens, up
    to LOOP_CONNECTIONS, so that PostgreSQL runs them in as many backends.
    """

    def __init__(self) -> None:
        self._opened: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[Any, ...], list[_Slot]]
        ] = weakref.WeakKeyDictionary()

    async def fetchall(
        self, wrapper: BaseDatabaseWrapper, sql: str, params: Sequence[Any]
    ) -> list[Any] | None:
        """Return the rows of sql (placeholders $1, $2, ...), in binary; None where it may not."""
        if for_sync_caller():
            return None
        # Imported here: run_to_end's module imports this one.
        from blobstore.storage.base import run_to_end

        slot = self._slot(wrapper)
        slot.reads += 1
        pipeline = None
        try:
            # Shared by the reads that come while it opens; a cancelled one leaves it opening.
            pipeline = await run_to_end(slot.opening)
            if pipeline is not None:
                # A cancelled read drops its result when it comes: the pipeline stays in step.
                return await pipeline.fetchall(sql, params)
        except Exception:
            pass  # the caller's connection reads instead, and reports what went wrong
        finally:
            slot.reads -= 1
        if pipeline is None or pipeline.broken:
            await self._forget(wrapper, slot)  # the next read opens another
        return None

    async def close(self) -> None:
        """Close this event loop's connections."""
        opened = self._opened.pop(asyncio.get_running_loop(), {})
        for slots in opened.values():
            for slot in slots:
                await _close(slot.opening)

    def connections(self) -> list[asyncio.Task[Any]]:
        """Return this event loop's connections, as they open, to every database."""
        opened = self._opened.get(asyncio.get_running_loop(), {})
        return [slot.opening for slots in opened.values() for slot in slots]

    def _slot(self, wrapper: BaseDatabaseWrapper) -> _Slot:
        opened = self._opened.setdefault(asyncio.get_running_loop(), {})
        slots = opened.setdefault(_identity(wrapper), [])
        least_busy = min(slots, key=lambda slot: slot.reads, default=None)
        if least_busy is None or (least_busy.reads and len(slots) < LOOP_CONNECTIONS):
            least_busy = _Slot(asyncio.ensure_future(_connect(wrapper)))
            slots.append(least_busy)
        return least_busy

    async def _forget(self, wrapper: BaseDatabaseWrapper, slot: _Slot) -> None:
        slots = self._opened.get(asyncio.get_running_loop(), {}).get(_identity(wrapper), [])
        if slot in slots:
            slots.remove(slot)
        await _close(slot.opening)


def _identity(wrapper: BaseDatabaseWrapper) -> tuple[Any, ...]:
    settings = wrapper.settings_dict
    return (settings["HOST"], settings["PORT"], settings["NAME"], settings["USER"])


async def _connect(wrapper: BaseDatabaseWrapper) -> _Pipeline | None:
    """Return a pipeline on a connection opened as Django would open wrapper's, or None."""
    import psycopg

    if not psycopg.Pipeline.is_supported():
        return None  # a libpq older than 14: reads go through Django's connection
    params = wrapper.get_connection_params()
    params.pop("cursor_factory", None)  # Django's is a synchronous cursor
    try:
        connection = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        # Datetimes in the zone that Django's connection gives them.
        await connection.execute(
            "SELECT set_config('TimeZone', %s, false)",
            [wrapper.timezone_name],
        )
    except psycopg.Error:
        return None
    return _Pipeline(connection)


@dataclass(eq=False)
class _Read:
    """A read sent down a pipeline: the future of its rows, and what loads them."""

    future: asyncio.Future[list[Any]]
    transformer: Transformer


class _Pipeline:
    """An async connection in libpq's pipeline mode: reads go out at once, results come in order.

    One callback on the socket hands each result to its read's future, many
    in one wakeup under load, where a cursor would wait for each statement in
    turn with a task and a reader of its own. A read whose caller is
    cancelled only drops its result: the connection stays in step. Any error
    breaks the pipeline, and fails every read in it; its callers read
    through Django's connection instead, which reports the error.
    """

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.pgconn = connection.pgconn
        self.socket = self.pgconn.socket
        self.loop = asyncio.get_running_loop()
        self.prepared: dict[tuple[str, tuple[int, ...]], bytes] = {}
        # What was sent, in order: a read, or None for a prepare or a sync.
        self.sent: collections.deque[_Read | None] = collections.deque()
        self.results: list[Any] = []  # of the command at the head of sent, so far
        self.writing = False
        self.failure: Exception | None = None
        self.pgconn.nonblocking = 1
        self.pgconn.enter_pipeline_mode()
        self.loop.add_reader(self.socket, self._receive)

    def fetchall(self, sql: str, params: Sequence[Any]) -> asyncio.Future[list[Any]]:
        """Send sql (placeholders $1, $2, ...); return the future of its rows, in binary."""
        from psycopg.adapt import PyFormat, Transformer

        if self.failure is not None:
            raise self.failure
        transformer = Transformer(self.connection)
        values = transformer.dump_sequence(params, [PyFormat.AUTO] * len(params))
        types = tuple(transformer.types or ())
        formats = transformer.formats
        if self.connection.prepare_threshold is None:
            # The site's OPTIONS ask for no prepared statements (PgBouncer in transaction mode).
            self.pgconn.send_query_params(
                sql.encode(), values, types, formats, result_format=_BINARY
            )
        else:
            name = self.prepared.get((sql, types))
            if name is None:
                name = self.prepared[sql, types] = f"blobstore_{len(self.prepared)}".encode()
                self.pgconn.send_prepare(name, sql.encode(), param_types=types)
                self.sent.append(None)
            self.pgconn.send_query_prepared(name, values, formats, result_format=_BINARY)
        self.pgconn.pipeline_sync()
        rows: asyncio.Future[list[Any]] = self.loop.create_future()
        self.sent += (_Read(rows, transformer), None)
        self._flush()
        return rows

    @property
    def broken(self) -> bool:
        """Return whether an error has ended the pipeline."""
        return self.failure is not None

    def _flush(self) -> None:
        # Non-blocking: what the socket does not take now goes when it is writable.
        if self.pgconn.flush() and not self.writing:
            self.writing = True
            self.loop.add_writer(self.socket, self._write)

    def _write(self) -> None:
        try:
            if not self.pgconn.flush():
                self.loop.remove_writer(self.socket)
                self.writing = False
        except Exception as failure:
            self._break(failure)

    def _receive(self) -> None:
        from psycopg import pq

        try:
            self.pgconn.consume_input()
            while not self.pgconn.is_busy():
                result = self.pgconn.get_result()
                if result is None:
                    if not self.results:
                        break  # nothing more has arrived
                    # Left at the head until settled: a failure fails its read too.
                    self._settle(self.sent[0], self.results)
                    self.sent.popleft()
                    self.results = []
                elif result.status == pq.ExecStatus.PIPELINE_SYNC:
                    self.sent.popleft()
                else:
                    self.results.append(result)
        except Exception as failure:
            self._break(failure)

    @staticmethod
    def _settle(sent: _Read | None, results: list[Any]) -> None:
        import psycopg
        from psycopg import pq

        (result,) = results
        if result.status not in {pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK}:
            message = (result.error_message or b"").decode(errors="replace")
            raise psycopg.OperationalError(message or f"pipeline command ended {result.status!r}")
        if sent is None or sent.future.done():  # a prepare, or a read given up
            return
        sent.transformer.set_pgresult(result)
        sent.future.set_result(sent.transformer.load_rows(0, result.ntuples, tuple))

    def _break(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
            self.loop.remove_reader(self.socket)
            if self.writing:
                self.loop.remove_writer(self.socket)
        for sent in self.sent:
            if sent is not None and not sent.future.done():
                sent.future.set_exception(failure)
        self.sent.clear()

    async def close(self) -> None:
        """Fail the reads under way and close the connection."""
        import psycopg

        self._break(psycopg.OperationalError("the pipeline is closed"))
        await self.connection.close()


_BINARY = 1
"""libpq's result format for binary values."""


async def _close(opening: asyncio.Task[Any]) -> None:
    with contextlib.suppress(Exception):
        pipeline = await opening
        if pipeline is not None:
            await pipeline.close()


loop_reader = LoopReader()
"""The process's SQLite reader: each thread's connections, one per file."""

postgresql_reader = PostgreSQLLoopReader()
"""The process's PostgreSQL reader: each event loop's connections, one per database."""
