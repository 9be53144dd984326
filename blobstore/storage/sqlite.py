"""A storage that keeps blobs in one SQLite file, through aiosqlite and raw SQL."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import pathlib
import sqlite3
import time

import aiosqlite

from blobstore.storage.base import (
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_PAGE_SIZE,
    BaseStorage,
    BlobInfo,
    BytesLike,
    GatheredStreams,
    prefix_end,
    validate_digest,
    validate_item,
    validate_key,
    validate_listing,
)

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
    sha256 TEXT NOT NULL
);
"""

_INSERT = "INSERT INTO blobs (key, value, size, updated, sha256) VALUES (?, ?, ?, ?, ?)"
_UPSERT = f"""{_INSERT} ON CONFLICT (key) DO UPDATE
SET value = excluded.value, size = excluded.size, updated = excluded.updated,
    sha256 = excluded.sha256"""
_CREATE = f"{_INSERT} ON CONFLICT (key) DO NOTHING RETURNING 1"
_REPLACE = """UPDATE blobs SET key = ?, value = ?, size = ?, updated = ?, sha256 = ?
WHERE key = ? AND sha256 = ? RETURNING 1"""
_INFO_COLUMNS = "key, size, updated, sha256"

_SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class SQLiteStorage(GatheredStreams, BaseStorage):
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

    async def db(self) -> aiosqlite.Connection:
        """Return the database connection, opening it on first use."""
        if self._db is None:
            async with self._opening:
                if self._db is None:
                    self._db = await self._open()
        return self._db

    async def _open(self) -> aiosqlite.Connection:
        # isolation_level=None: each statement commits by itself, with no
        # BEGIN/COMMIT round trips through aiosqlite's thread.
        db = await aiosqlite.connect(self.database_path, timeout=self.timeout, isolation_level=None)
        try:
            await self._prepare(db)
        except BaseException:
            await db.close()
            raise
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
                return
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        validate_key(key)
        rows = await self._fetchall("SELECT value FROM blobs WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there."""
        row = _row(key, validate_item(key, blob, self.max_object_size))
        db = await self.db()
        await db.execute(_UPSERT, row)

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        validate_key(key)
        rows = await self._fetchall("SELECT 1 FROM blobs WHERE key = ?", (key,))
        return bool(rows)

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        validate_key(key)
        db = await self.db()
        await db.execute("DELETE FROM blobs WHERE key = ?", (key,))

    async def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        sql = f"SELECT {_INFO_COLUMNS} FROM blobs WHERE key >= ? AND key > ?"
        params: list[object] = [prefix, after]
        end = prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        rows = await self._fetchall(f"{sql} ORDER BY key LIMIT ?", (*params, limit))
        return [_info(*row) for row in rows]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        rows = await self._fetchall(f"SELECT {_INFO_COLUMNS} FROM blobs WHERE key = ?", (key,))
        return _info(*rows[0]) if rows else None

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of the blob stored under key, or None."""
        validate_key(key)
        rows = await self._fetchall(
            f"SELECT {_INFO_COLUMNS}, value FROM blobs WHERE key = ?", (key,)
        )
        return (_info(*rows[0][:4]), rows[0][4]) if rows else None

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        row = _row(key, validate_item(key, blob, self.max_object_size))
        return bool(await self._fetchall(_CREATE, row))

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        row = _row(key, validate_item(key, blob, self.max_object_size))
        return bool(await self._fetchall(_REPLACE, (*row, key, validate_digest(sha256))))

    async def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        # One hop to aiosqlite's thread, where execute + fetchone + close take three.
        db = await self.db()
        return list(await db.execute_fetchall(sql, params))


def _row(key: str, data: bytes | memoryview) -> tuple[str, bytes | memoryview, int, float, str]:
    return key, data, len(data), time.time(), hashlib.sha256(data).hexdigest()


def _info(key: str, size: int, updated: float, sha256: str) -> BlobInfo:
    return BlobInfo(key, size, datetime.datetime.fromtimestamp(updated, datetime.UTC), sha256)
