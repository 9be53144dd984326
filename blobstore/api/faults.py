"""What a storage's failure means for a client: the database busy or gone (503), or full (507).

A storage raises the database driver's own exceptions (``sqlite3``,
``psycopg``), or Django's wrappers of them, whose ``__cause__`` is the
driver's. :func:`classify` reads the chain and says whether the failure is
one the client can do nothing about but wait (503 with ``Retry-After``) or
one that needs an operator to free space (507). Anything else is a bug and
stays a 500 with its traceback.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponse

BUSY_RETRY_AFTER = 1
"""Seconds a client waits before it asks again a database that was busy."""
UNREACHABLE_RETRY_AFTER = 5
"""Seconds a client waits before it asks again a database that could not be reached."""

logger = logging.getLogger("blobstore.faults")

# PostgreSQL's SQLSTATEs (and classes, by their first characters) of failures
# that pass: connections lost or refused, the server shutting down (gone); the
# server out of resources, a statement cancelled, a lock or a serialization
# given up (busy).
_PG_FULL = "53100"
_PG_GONE = ("08", "57P")
_PG_BUSY = ("53", "57014", "55P03", "40", "58")
_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL}
_SQLITE_UNREACHABLE = {sqlite3.SQLITE_CANTOPEN}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_CHAIN_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Fault:
    """What a failure of the storage means: the status to answer and why."""

    status: int
    message: str
    retry_after: int | None = None

    def response(self) -> HttpResponse:
        """Return the JSON error response that tells the client."""
        # blobstore.api.responses imports this module: its helper is imported when needed.
        from blobstore.api.responses import error

        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        response = error(self.status, self.message, headers)
        # Logged once, by log_fault(); Django's handler would log a 5xx again.
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response


BUSY = Fault(
    503,
    "The database is busy; nothing was changed. Wait as Retry-After says, then try again.",
    BUSY_RETRY_AFTER,
)
UNREACHABLE = Fault(
    503,
    "The database cannot be reached; nothing was changed. Wait as Retry-After says, then "
    "try again.",
    UNREACHABLE_RETRY_AFTER,
)
FULL = Fault(
    507,
    "The storage is full; nothing was changed. An operator must free space.",
)


def classify(exc: BaseException) -> Fault | None:
    """Return what exc, raised by a storage, means for the client, or None if it is a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _CHAIN_DEPTH:
        seen.add(id(current))
        fault = _classify_one(current)
        if fault is not None:
            return fault
        # Django's database errors carry the driver's as __cause__; a failure
        # while cleaning up after one carries it as __context__.
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return None


def _classify_one(exc: BaseException) -> Fault | None:
    if isinstance(exc, sqlite3.Error):
        return _classify_sqlite(exc)
    if isinstance(exc, OSError):
        return FULL if exc.errno in _DISK_FULL_ERRNOS else None
    return _classify_psycopg(exc)


def _classify_sqlite(exc: sqlite3.Error) -> Fault | None:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF  # extended codes keep the primary's low byte
    message = str(exc).lower()
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in message:
        return FULL
    if primary in _SQLITE_BUSY or "database is locked" in message:
        return BUSY
    if primary in _SQLITE_UNREACHABLE or "unable to open database file" in message:
        return UNREACHABLE
    return None


def _classify_psycopg(exc: BaseException) -> Fault | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a site without PostgreSQL
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state == _PG_FULL:
        return FULL
    if state is not None:
        if state.startswith(_PG_GONE):
            return UNREACHABLE
        return BUSY if state.startswith(_PG_BUSY) else None
    # No SQLSTATE: the client library lost or could not open the connection,
    # or (InternalError) got answers it cannot pair with its commands, as when
    # the server ended the connection in the middle of a fetch.
    lost = isinstance(exc, psycopg.OperationalError | psycopg.InternalError)
    return UNREACHABLE if lost else None


async def fault_response(request: HttpRequest, exc: BaseException) -> HttpResponse | None:
    """Return the response a storage failure means, logged once; None if exc is a bug.

    A connection that the failure broke is closed, so that the next request
    opens a new one instead of failing on it again.
    """
    fault = classify(exc)
    if fault is None:
        return None
    log_fault(request, exc, fault)
    await sync_to_async(close_broken_connections)()
    return fault.response()


def log_fault(
    request: HttpRequest, exc: BaseException, fault: Fault, *, outcome: str | None = None
) -> None:
    """Log one line, with no traceback: the failure is the database's, not the code's."""
    cause = exc.__cause__ or exc
    detail = (str(cause).strip().splitlines() or [""])[0]
    logger.warning(
        "%s %s: %s: %s: %s",
        request.method,
        request.path,
        outcome or f"answered {fault.status}",
        type(cause).__name__,
        detail,
    )


def close_broken_connections() -> None:
    """Close this thread's database connections that an error left unusable."""
    for connection in connections.all(initialized_only=True):
        # Inside a transaction the connection is its owner's to end.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
