"""A storage that keeps blobs in one SQLite file, through aiosqlite and raw SQL.

Large blobs are a ``blobs`` row and ``chunks`` rows, as
:mod:`blobstore.storage.chunked` describes; triggers drop a version's chunks
in the statement that replaces or deletes its row.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import pathlib
import sqlite3
import threading
import time
import uuid
import weakref

import aiosqlite

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    BlobInfo,
    BytesLike,
    once,
    prefix_end,
    run_to_end,
    validate_item,
    validate_key,
    validate_listing,
)
from blobstore.storage.chunked import (
    ChunkedStorage,
    ChunkSink,
    ChunkSource,
    CommitGroup,
    Version,
    last_of_each_key,
)
from blobstore.storage.loop import loop_reader

MEMORY = ":memory:"

# WAL lets readers and one writer work at once, across processes; with it,
# synchronous=NORMAL syncs at checkpoints instead of at every commit, which
# keeps every commit safe from a crash of the process (though not from a
# power cut, see the README).
_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = {synchronous};
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    updated REAL NOT NULL,
    sha256 TEXT NOT NULL,
    version TEXT
    -- and the columns of _ADDED_COLUMNS, added to files made before them
);
CREATE TABLE IF NOT EXISTS chunks (
    version TEXT NOT NULL,
    idx INTEGER NOT NULL,
    created REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (version, idx)
);
CREATE TRIGGER IF NOT EXISTS blobs_replaced AFTER UPDATE OF version ON blobs
WHEN OLD.version IS NOT NULL AND OLD.version IS NOT NEW.version
BEGIN DELETE FROM chunks WHERE version = OLD.version; END;
CREATE TRIGGER IF NOT EXISTS blobs_deleted AFTER DELETE ON blobs
WHEN OLD.version IS NOT NULL
BEGIN DELETE FROM chunks WHERE version = OLD.version; END;
"""

_ADDED_COLUMNS = {
    "content_type": "TEXT NOT NULL DEFAULT 'application/octet-stream'",
    "metadata": "TEXT NOT NULL DEFAULT '{}'",
    "created": "REAL",
    "expires": "REAL",
}
_INDEXES = "CREATE INDEX IF NOT EXISTS blobs_expires ON blobs (expires) WHERE expires IS NOT NULL"

_LIVE = "(expires IS NULL OR expires > ?)"
"""Whether a row is a blob that may be read, given the time now."""
_COLUMNS = "key, value, size, updated, sha256, version, content_type, metadata, created, expires"
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT = f"INSERT INTO blobs ({_COLUMNS}) VALUES {_ROW}"
_NEW_VERSION = """value = excluded.value, size = excluded.size, updated = excluded.updated,
    sha256 = excluded.sha256, version = excluded.version, content_type = excluded.content_type,
    metadata = excluded.metadata, expires = excluded.expires"""
# A key keeps the time it was created while it holds live blobs.
_UPSERT = f"""ON CONFLICT (key) DO UPDATE SET {_NEW_VERSION},
    created = CASE WHEN {_LIVE.replace("?", "excluded.updated")} THEN coalesce(created, updated)
                   ELSE excluded.created END
RETURNING key, created"""
_CREATE = f"""{_INSERT} ON CONFLICT (key) DO UPDATE SET {_NEW_VERSION}, created = excluded.created
WHERE NOT {_LIVE.replace("?", "excluded.updated")} RETURNING created"""
_REPLACE = f"""UPDATE blobs SET ({_COLUMNS.replace(", created", "")}) = (?, ?, ?, ?, ?, ?, ?, ?, ?)
WHERE key = ? AND sha256 = ? AND {_LIVE} RETURNING coalesce(created, updated)"""
_INFO_COLUMNS = "key, size, updated, sha256, content_type, metadata, created, expires"
_CHUNKS = "SELECT data FROM chunks WHERE version = ? AND idx BETWEEN ? AND ? ORDER BY idx"
_UNNAMED = "version NOT IN (SELECT version FROM blobs WHERE version IS NOT NULL)"
_EXPIRED = "DELETE FROM blobs WHERE key IN (SELECT key FROM blobs WHERE expires <= ? LIMIT ?)"
_ABANDONED = f"""SELECT version FROM chunks WHERE {_UNNAMED}
GROUP BY version HAVING max(created) < ? LIMIT ?"""

_SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_CHUNKS_PER_FETCH = 4


class SQLiteStorage(ChunkedStorage):
    """Keep blobs in a table of one SQLite database, opened on first use.

    Several processes may share one file: it is opened in WAL mode, and a
    writer waits up to ``timeout`` seconds for another one to finish.
    ``synchronous="FULL"`` makes every commit survive a power cut too, at the
    price of an fsync per write.
    """

    def __init__(
        self,
        database_path: str | os.PathLike[str] = MEMORY,
        *,
        max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE,
        timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        super().__init__(max_object_size=max_object_size)
        if synchronous not in _SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {_SYNCHRONOUS_MODES}, not {synchronous!r}."
            )
        if database_path == MEMORY:
            self.database_path = MEMORY
        else:
            self.database_path = str(pathlib.Path(database_path).expanduser().resolve())
        self.timeout = timeout
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._group = CommitGroup(self._upsert_many)

    async def db(self) -> aiosqlite.Connection:
        """Return the database connection, opening it on first use."""
        if self._db is None:
            async with self._opening:
                if self._db is None:
                    # An abandoned open would leave a connection and its thread behind.
                    self._db = await run_to_end(self._open())
        return self._db

    async def _open(self) -> aiosqlite.Connection:
        db = await self._connect()
        try:
            await self._prepare(db)
        except BaseException:
            await db.close()
            raise
        return db

    async def _connect(self) -> aiosqlite.Connection:
        """Open a connection whose thread will not keep the process alive once the main one ends."""
        # isolation_level=None: each statement commits by itself, with no
        # BEGIN/COMMIT round trips through aiosqlite's thread.
        db = await aiosqlite.connect(self.database_path, timeout=self.timeout, isolation_level=None)
        _open_connections.add(db)
        with _closer_lock:
            if _closer.ident is None:
                _closer.start()
        return db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        # Turning a new file to WAL takes an exclusive lock, and SQLite answers
        # BUSY at once, without its busy timeout, to connections that would
        # deadlock over it: several processes opening one new file must retry.
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                await db.executescript(_SCHEMA.format(synchronous=self.synchronous))
                await self._add_columns(db)
                return
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _add_columns(self, db: aiosqlite.Connection) -> None:
        """Add the columns that a file made by an earlier blobstore lacks."""
        if await self._missing_columns(db):
            # Looked at again under the write lock: another process may be adding them too.
            await db.execute("BEGIN IMMEDIATE")
            try:
                for name in await self._missing_columns(db):
                    await db.execute(f"ALTER TABLE blobs ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        await db.execute(_INDEXES)

    @staticmethod
    async def _missing_columns(db: aiosqlite.Connection) -> list[str]:
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(blobs)")}
        return [name for name in _ADDED_COLUMNS if name not in columns]

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        validate_key(key)
        rows = await self._read(
            f"SELECT value, version FROM blobs WHERE key = ? AND {_LIVE}", (key, time.time())
        )
        if not rows:
            return default
        value, version = rows[0]
        if version is None:
            return value  # type: ignore[no-any-return]
        fetched = await self.fetch(key)
        return default if fetched is None else fetched[1]

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there."""
        data = validate_item(key, blob, self.max_object_size)
        if len(data) > self.chunk_size:
            await self.write(key, once(data))
            return
        row = Version(key, data, len(data), hashlib.sha256(data).hexdigest(), None, self._now())
        await run_to_end(self._commit(row, if_absent=False, if_sha256=None))

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        validate_key(key)
        rows = await self._read(
            f"SELECT 1 FROM blobs WHERE key = ? AND {_LIVE}", (key, time.time())
        )
        return bool(rows)

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        validate_key(key)
        await run_to_end(self._fetchall("DELETE FROM blobs WHERE key = ?", (key,)))

    async def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        db, self._db = self._db, None
        if db is not None:
            await run_to_end(db.close())

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        sql = f"SELECT {_INFO_COLUMNS} FROM blobs WHERE key >= ? AND key > ? AND {_LIVE}"
        params: list[object] = [prefix, after, time.time()]
        end = prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        rows = await self._read(f"{sql} ORDER BY key LIMIT ?", (*params, limit))
        return [_info(*row) for row in rows]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        rows = await self._read(
            f"SELECT {_INFO_COLUMNS} FROM blobs WHERE key = ? AND {_LIVE}", (key, time.time())
        )
        return _info(*rows[0]) if rows else None

    async def _purge_batch(self, older_than: datetime.timedelta, limit: int) -> tuple[int, int]:
        db = await self.db()
        cursor = await db.execute(_EXPIRED, (time.time(), limit))
        await cursor.close()
        expired = cursor.rowcount
        versions = [
            version
            for (version,) in await self._fetchall(
                _ABANDONED, (time.time() - older_than.total_seconds(), limit)
            )
        ]
        if not versions:
            return expired, expired
        marks = ", ".join("?" * len(versions))
        # Checked again in the statement that deletes: a commit may have named one since.
        cursor = await db.execute(
            f"DELETE FROM chunks WHERE version IN ({marks}) AND {_UNNAMED}", versions
        )
        await cursor.close()
        return expired + len(versions), expired + cursor.rowcount

    async def _read_head(self, key: str) -> tuple[BlobInfo, bytes, uuid.UUID | None] | None:
        rows = await self._read(
            f"SELECT {_INFO_COLUMNS}, value, version FROM blobs WHERE key = ? AND {_LIVE}",
            (key, time.time()),
        )
        if not rows:
            return None
        *info, head, version = rows[0]
        return _info(*info), head, None if version is None else uuid.UUID(version)

    async def _open_chunks(self, version: uuid.UUID, first: int, last: int) -> ChunkSource:
        if self.database_path == MEMORY:
            # No other connection sees this database: read on the one there is.
            return await _ChunkReader.open(await self.db(), version, first, last, owned=False)
        # A connection of its own, whose statement keeps a snapshot while it runs.
        own = await run_to_end(self._connect())
        return await run_to_end(_ChunkReader.open(own, version, first, last, owned=True))

    async def _open_sink(self) -> ChunkSink:
        return _ChunkSink(await self.db())

    async def _commit(
        self, row: Version, *, if_absent: bool, if_sha256: str | None
    ) -> datetime.datetime | None:
        if not if_absent and if_sha256 is None:
            # A blob of one row is committed with the other writers' of the
            # moment; a chunked one alone, so that no version goes unnamed.
            if row.version is None:
                return await self._group.commit(row)
            (created,) = await self._upsert_many([row])
            return created
        *columns, _, expires = values = _values(row, created=row.updated)
        if if_sha256 is not None:
            # The columns but created, then the conditions: the key, its digest, the time.
            condition = (row.key, if_sha256, row.updated.timestamp())
            rows = await self._fetchall(_REPLACE, (*columns, expires, *condition))
        else:
            rows = await self._fetchall(_CREATE, values)
        return _time(rows[0][0]) if rows else None

    async def _upsert_many(self, rows: list[Version]) -> list[datetime.datetime | None]:
        """Insert or replace rows in one statement; return the creation of each key.

        Of the rows of one key, the last is written, created when the first
        was (:func:`~blobstore.storage.chunked.last_of_each_key`).
        """
        latest = last_of_each_key(rows)
        sql = f"INSERT INTO blobs ({_COLUMNS}) VALUES {', '.join([_ROW] * len(latest))} {_UPSERT}"
        params = tuple(value for row, created in latest for value in _values(row, created=created))
        found = {key: created for key, created in await self._fetchall(sql, params)}
        return [_time(found[row.key]) for row in rows]

    async def _discard(self, version: uuid.UUID) -> None:
        await self._fetchall("DELETE FROM chunks WHERE version = ?", (version.hex,))

    async def _read(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        """Return the rows of a read: on the loop's thread where it may, else as _fetchall."""
        if self.database_path != MEMORY:
            await self.db()  # the file exists, in WAL mode, with its tables
            rows = loop_reader.fetchall(self.database_path, sql, params)
            if rows is not None:
                return rows
        return await self._fetchall(sql, params)

    async def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        # One hop to aiosqlite's thread, where execute + fetchone + close take three.
        db = await self.db()
        return list(await db.execute_fetchall(sql, params))


class _ChunkReader:
    """The chunk rows of one version, read by one statement."""

    def __init__(self, db: aiosqlite.Connection, cursor: aiosqlite.Cursor, *, owned: bool) -> None:
        self.db = db
        self.cursor = cursor
        self.owned = owned
        self.closed = False
        self.rows: list[bytes] = []

    @classmethod
    async def open(
        cls, db: aiosqlite.Connection, version: uuid.UUID, first: int, last: int, *, owned: bool
    ) -> _ChunkReader:
        """Start reading the chunks numbered first to last of version on db."""
        try:
            cursor = await db.execute(_CHUNKS, (version.hex, first, last))
        except BaseException:
            if owned:
                await db.close()
            raise
        return cls(db, cursor, owned=owned)

    async def next_chunk(self) -> bytes | None:
        """Return the next chunk, or None after the last."""
        if not self.rows:
            self.rows = [data for (data,) in await self.cursor.fetchmany(_CHUNKS_PER_FETCH)]
        return self.rows.pop(0) if self.rows else None

    async def close(self) -> None:
        """Finish the statement, and close the connection if it is the reader's own."""
        if self.closed:
            return
        self.closed = True
        await run_to_end(self._close())

    async def _close(self) -> None:
        try:
            await self.cursor.close()
        finally:
            if self.owned:
                await self.db.close()


class _ChunkSink:
    """Writes an upload's chunk rows, each committed by itself."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def insert(self, version: uuid.UUID, index: int, data: BytesLike) -> None:
        """Store chunk number index of version."""
        await self.db.execute(
            "INSERT INTO chunks (version, idx, created, data) VALUES (?, ?, ?, ?)",
            (version.hex, index, time.time(), data),
        )

    async def close(self) -> None:
        """Nothing to release: the storage's connection stays open."""


def _info(
    key: str,
    size: int,
    updated: float,
    sha256: str,
    content_type: str,
    metadata: str,
    created: float | None,
    expires: float | None,
) -> BlobInfo:
    return BlobInfo(
        key,
        size,
        _time(updated),
        sha256,
        content_type,
        json.loads(metadata),
        _time(updated if created is None else created),
        None if expires is None else _time(expires),
    )


def _values(row: Version, *, created: datetime.datetime) -> tuple[object, ...]:
    """Return the values of row's columns, in the order of _COLUMNS."""
    attributes = row.attributes
    return (
        row.key,
        row.head,
        row.size,
        row.updated.timestamp(),
        row.sha256,
        None if row.version is None else row.version.hex,
        attributes.content_type,
        json.dumps(attributes.metadata),
        created.timestamp(),
        None if attributes.expires is None else attributes.expires.timestamp(),
    )


def _close_open_connections() -> None:
    # aiosqlite's worker thread is not a daemon: a storage left open (a shell,
    # a sync program using BlobFileStorage, a server without lifespan events)
    # would make the interpreter wait for it forever at exit. Python releases
    # the main thread's join before it waits for the other threads.
    threading.main_thread().join()
    for db in list(_open_connections):
        db.stop()


_open_connections: weakref.WeakSet[aiosqlite.Connection] = weakref.WeakSet()
_closer = threading.Thread(
    target=_close_open_connections, name="blobstore-sqlite-closer", daemon=True
)
_closer_lock = threading.Lock()


def _time(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
