"""Reads of a SQLite file in WAL mode on the event loop's own thread.

A read of one row by its key takes SQLite microseconds; a hop to a thread
that owns a connection (Django's, aiosqlite's) and back costs the event loop
far more, and under load the thread waits for the loop's GIL besides. In WAL
mode a reader never waits for a writer, so such a read may run on the loop
itself, on a connection of the loop's thread that sees committed rows only.

It is used only where nothing else could be seen: not from code that
``async_to_sync`` runs for a synchronous caller, whose thread's connection
may be inside a transaction (a ``TestCase``, ``transaction.atomic()``), and
whose event loop lives for one call only.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from asgiref.sync import AsyncToSync


class LoopReader:
    """A read-only connection per thread to SQLite files in WAL mode."""

    def __init__(self) -> None:
        self._local = threading.local()

    def fetchall(self, path: str, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """Return the rows of sql on the file at path, or None where the loop may not read."""
        if for_sync_caller():
            return None
        reader = self._reader(path)
        if reader is None:
            return None
        try:
            return reader.execute(sql, params).fetchall()
        except sqlite3.Error:
            # The caller's usual connection will meet the fault too, and report it.
            return None

    def _reader(self, path: str) -> sqlite3.Connection | None:
        opened: dict[str, sqlite3.Connection | None] = self._local.__dict__.setdefault("opened", {})
        if path not in opened:
            opened[path] = _open_wal(path)
        return opened[path]


def for_sync_caller() -> bool:
    """Return whether this code runs under async_to_sync, for a synchronous caller."""
    return getattr(AsyncToSync.executors, "current", None) is not None


def _open_wal(path: str) -> sqlite3.Connection | None:
    """Return a read-only connection to the file at path, or None unless it is in WAL mode."""
    try:
        # A short busy timeout: WAL readers wait only while a file is being recovered.
        uri = f"{pathlib.Path(path).absolute().as_uri()}?mode=rw"  # never a new, empty file
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
