"""A storage that keeps blobs in the Blob table through Django's async ORM.

Large blobs are a ``Blob`` row and ``BlobChunk`` rows, as
:mod:`blobstore.storage.chunked` describes. On PostgreSQL with psycopg 3,
chunks travel as binary parameters and results, not as hex text.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models, transaction
from django.db.models import Max, Q
from django.utils import timezone

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
from blobstore.storage.loop import postgresql_reader
from blobstore.storage.statement import (
    Statement,
    binary_postgresql,
    cursor_for,
    execute,
    in_memory,
    naive_local,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import QuerySet

    from blobstore.models import Blob, BlobChunk

CHUNKS_PER_FETCH = 4
"""How many chunks a stream reads from the database at a time."""

# In the order of BlobInfo's fields.
_INFO_FIELDS = [
    "key",
    "size",
    "updated",
    "sha256",
    "content_type",
    "metadata",
    "created",
    "expires",
]
_ATTEMPTS = 5
_RETRIED_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure

T = TypeVar("T")


class ORMStorage(ChunkedStorage):
    """Keep blobs in :class:`blobstore.models.Blob` rows on the database ``using`` names.

    Connections belong to Django, which opens and closes them, but for the
    ones that a server's event loop reads on (:mod:`blobstore.storage.loop`),
    which ``close()`` closes. SQLite and PostgreSQL are supported.
    A write that finds the database locked by another writer (SQLite) or
    deadlocked (PostgreSQL) is tried again for up to ``timeout`` seconds;
    writes to one SQLite database take turns within the process, whatever
    the site's SQLite settings.
    """

    def __init__(
        self,
        *,
        using: str = DEFAULT_DB_ALIAS,
        max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(max_object_size=max_object_size)
        if not isinstance(using, str):
            raise TypeError(f"using must be a database alias (a str), not {type(using).__name__}.")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds, not {timeout!r}.")
        self.using = using
        self.timeout = float(timeout)
        self._selects: dict[tuple[str, ...], Statement] = {}
        self._group = CommitGroup(self._upsert_group)

    @property
    def blobs(self) -> QuerySet[Blob]:
        """Return all Blob rows of this storage's database."""
        # Imported here so that blobstore.storage can be imported before the
        # app registry is ready, e.g. from a settings module.
        from blobstore.models import Blob

        return Blob.objects.using(self.using)

    @property
    def live(self) -> QuerySet[Blob]:
        """Return the Blob rows that may be read: all but the expired ones."""
        return self.blobs.filter(Q(expires=None) | Q(expires__gt=timezone.now()))

    @property
    def chunks(self) -> QuerySet[BlobChunk]:
        """Return all BlobChunk rows of this storage's database."""
        from blobstore.models import BlobChunk

        return BlobChunk.objects.using(self.using)

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        validate_key(key)
        rows = await self._select(("data", "version"), key)
        if not rows:
            return default
        head, version = rows[0]
        if version is None:
            return _bytes(head)
        fetched = await self.fetch(key)
        return default if fetched is None else fetched[1]

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there."""
        data = validate_item(key, blob, self.max_object_size)
        if len(data) > self.chunk_size:
            await self.write(key, once(data))
            return
        row = Version(key, data, len(data), hashlib.sha256(data).hexdigest(), None, timezone.now())
        await run_to_end(self._commit(row, if_absent=False, if_sha256=None))

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        validate_key(key)
        return bool(await self._select((), key))

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        validate_key(key)
        await run_to_end(self._write(self._delete, key))

    async def close(self) -> None:
        """Close the connections this event loop has read on; the next read opens one again."""
        await postgresql_reader.close()

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        validate_listing(prefix, after, limit)
        # A key range, not __startswith: SQLite's LIKE ignores case.
        rows = self.live.filter(key__gte=prefix, key__gt=after)
        end = prefix_end(prefix)
        if end is not None:
            rows = rows.filter(key__lt=end)
        records = rows.order_by("key").values_list(*_INFO_FIELDS)[:limit]
        return [BlobInfo(*record) async for record in records]

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        validate_key(key)
        rows = await self._select(tuple(_INFO_FIELDS), key)
        return BlobInfo(*rows[0]) if rows else None

    async def _read_head(self, key: str) -> tuple[BlobInfo, bytes, uuid.UUID | None] | None:
        rows = await self._select((*_INFO_FIELDS, "data", "version"), key)
        if not rows:
            return None
        *info, head, version = rows[0]
        return BlobInfo(*info), _bytes(head), version

    async def _open_chunks(self, version: uuid.UUID, first: int, last: int) -> ChunkSource:
        reader = _ChunkReader(self.using, version, first, last)
        await reader.open()
        return reader

    async def _open_sink(self) -> ChunkSink:
        sink = _ChunkSink(self.using, self.timeout)
        await sink.open()
        return sink

    async def _commit(
        self, row: Version, *, if_absent: bool, if_sha256: str | None
    ) -> datetime.datetime | None:
        if row.version is None and not if_absent and if_sha256 is None:
            # One statement replaces a live blob of one chunk, in a transaction
            # with the other writers' of the moment; a chunked or expired one
            # needs a transaction of its own, which deletes its chunks too.
            created = await self._group.commit(row)
            if created is not None:
                return created
        return await self._write(self._commit_now, row, if_absent, if_sha256)  # type: ignore[no-any-return]

    async def _upsert_group(self, rows: list[Version]) -> list[datetime.datetime | None]:
        return await self._write(self._upsert_many, rows)  # type: ignore[no-any-return]

    async def _discard(self, version: uuid.UUID) -> None:
        await self._write(self._delete_version, version)

    async def _purge_batch(self, older_than: datetime.timedelta, limit: int) -> tuple[int, int]:
        return await self._write(self._purge_now, older_than, limit)  # type: ignore[no-any-return]

    async def _write(self, function: Callable[..., Any], *args: Any) -> Any:
        """Return function(*args), a write on Django's connection, run where it may be."""
        return await sync_to_async(_writing)(connections[self.using], self.timeout, function, *args)

    def _now(self) -> datetime.datetime:
        return timezone.now()

    async def _select(self, columns: tuple[str, ...], key: str) -> list[tuple[Any, ...]]:
        """Return the given columns of the live row of key, as a list of at most one row."""
        statement = self._selects.get(columns) or self._compile_select(columns)
        rows = await statement.read([key])
        # Expiry is judged here, not in SQL: the key is unique, so at most one
        # row comes, and the database's form of "now" costs more than the row.
        now = timezone.now()
        return [row[:-1] for row in rows if row[-1] is None or row[-1] > now]

    def _compile_select(self, columns: tuple[str, ...]) -> Statement:
        query = self.blobs.filter(key=_KEY_MARK).values_list(*columns, "expires")
        statement = self._selects[columns] = Statement(query, [_KEY_MARK])
        return statement

    def _upsert_many(self, rows: list[Version]) -> list[datetime.datetime | None]:
        """Upsert rows in one statement; return the creation of each key, or None.

        None means that the blob there is chunked or expired, which the upsert
        leaves as it is. Of the rows of one key, the last is written, created
        when the first was (:func:`~blobstore.storage.chunked.last_of_each_key`).
        """
        connection = connections[self.using]
        prepared = [self._row_values(row, created=at) for row, at in last_of_each_key(rows)]
        table, columns = prepared[0]
        sql = self._upsert_sql(table, list(columns), rows=len(prepared))
        params = [value for _, values in prepared for value in values.values()]
        # One statement is a transaction of its own (or a part of the caller's):
        # no BEGIN and COMMIT to wait for.
        found = dict(execute(connection, sql, params))
        return [_as_django_gives(found[row.key]) if row.key in found else None for row in rows]

    def _upsert_sql(self, table: str, values: list[str], *, rows: int) -> str:
        """Return the statement that inserts, or replaces unchunked and live, rows of values."""
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self._replaced(values))
        key, created = _quoted(self.using, "key"), _quoted(self.using, "created")
        version, expires = _quoted(self.using, "version"), _quoted(self.using, "expires")
        updated = _quoted(self.using, "updated")
        return (
            f"INSERT INTO {table} ({', '.join(values)}) "
            f"VALUES {', '.join([f'({_marks(values)})'] * rows)} "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates} "
            f"WHERE {table}.{version} IS NULL AND "
            f"({table}.{expires} IS NULL OR {table}.{expires} > EXCLUDED.{updated}) "
            f"RETURNING {table}.{key}, {table}.{created}"
        )

    def _commit_now(
        self, row: Version, if_absent: bool, if_sha256: str | None
    ) -> datetime.datetime | None:
        """Point key at the row's version if the condition holds; return the key's creation."""
        for _ in range(_ATTEMPTS):
            with transaction.atomic(using=self.using):
                if if_absent and self._insert(row):
                    # The usual case of a new name, in one statement: no row to look at.
                    return row.updated
                current = (
                    self.blobs.select_for_update()
                    .filter(key=row.key)
                    .values_list("version", "sha256", "created", "expires")
                    .first()
                )
                if current is None:
                    if if_sha256 is not None:
                        return None
                    if self._insert(row):
                        return row.updated
                    if if_absent:
                        return None
                    continue  # another writer created the key: lock its row, then replace
                old_version, sha256, created, expires = current
                live = expires is None or expires > row.updated
                if live and (if_absent or (if_sha256 is not None and sha256 != if_sha256)):
                    return None
                if not live and if_sha256 is not None:
                    return None
                self._update(row, created=None if live else row.updated)
                if old_version is not None:
                    self.chunks.filter(version=old_version).delete()
                return created if live else row.updated
        raise RuntimeError(f"The blob {row.key!r} kept changing while it was being written.")

    def _insert(self, row: Version) -> bool:
        table, values = self._row_values(row)
        sql = (
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({_marks(values)}) "
            f"ON CONFLICT ({_quoted(self.using, 'key')}) DO NOTHING RETURNING 1"
        )
        return bool(execute(connections[self.using], sql, list(values.values())))

    def _update(self, row: Version, *, created: datetime.datetime | None) -> None:
        """Replace the row of row.key; a new creation time too, if given."""
        table, values = self._row_values(row)
        replaced = self._replaced(values)
        if created is not None:
            replaced.append(_quoted(self.using, "created"))
        key = _quoted(self.using, "key")
        sql = f"UPDATE {table} SET {', '.join(f'{c} = %s' for c in replaced)} WHERE {key} = %s"
        execute(connections[self.using], sql, [*(values[c] for c in replaced), values[key]])

    def _replaced(self, values: Iterable[str]) -> list[str]:
        """Return the columns that a new version of a blob changes: all but key and created."""
        kept = {_quoted(self.using, "key"), _quoted(self.using, "created")}
        return [column for column in values if column not in kept]

    def _row_values(
        self, row: Version, *, created: datetime.datetime | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Return the quoted table name and the quoted columns with their database values."""
        values = {
            "key": row.key,
            "data": row.head,
            "size": row.size,
            "sha256": row.sha256,
            "created": created or row.updated,
            "updated": row.updated,
            "version": row.version,
            "content_type": row.attributes.content_type,
            "metadata": dict(row.attributes.metadata),
            "expires": _as_field_takes(row.attributes.expires, connections[self.using]),
        }
        return _prepared(self.blobs.model, connections[self.using], values)

    def _delete(self, key: str) -> None:
        """Delete the blob under key, then its chunks: the order in which _commit_now locks."""
        connection = connections[self.using]
        table = _quoted(self.using, self.blobs.model._meta.db_table)
        key_column, version_column = _quoted(self.using, "key"), _quoted(self.using, "version")
        with transaction.atomic(using=self.using):
            sql = f"DELETE FROM {table} WHERE {key_column} = %s RETURNING {version_column}"
            rows = execute(connection, sql, [key])
            if rows and rows[0][0] is not None:
                self._delete_version(_uuid(rows[0][0]))

    def _delete_version(self, version: uuid.UUID) -> None:
        self.chunks.filter(version=version).delete()

    def _purge_now(self, older_than: datetime.timedelta, limit: int) -> tuple[int, int]:
        expired = list(
            self.blobs.filter(expires__lte=timezone.now()).values_list("pk", flat=True)[:limit]
        )
        gone = self.blobs.filter(pk__in=expired).delete()[0] if expired else 0
        found, deleted = self._purge_abandoned(older_than, limit)
        return len(expired) + found, gone + deleted

    def _purge_abandoned(self, older_than: datetime.timedelta, limit: int) -> tuple[int, int]:
        named = self.blobs.exclude(version=None).values("version")
        stale = list(
            self.chunks.exclude(version__in=named)
            .values("version")
            .annotate(newest=Max("created"))
            .filter(newest__lt=timezone.now() - older_than)
            .values_list("version", flat=True)[:limit]
        )
        if not stale:
            return 0, 0
        # Checked again in the statement that deletes: a commit may have named one since.
        deleted, _ = self.chunks.filter(version__in=stale).exclude(version__in=named).delete()
        return len(stale), deleted


_KEY_MARK = "\x00blobstore key\x00"


class _ChunkReader:
    """The chunks of one version of a blob, from a first to a last number, read in order.

    Outside a transaction they are read on a connection of the reader's own,
    by one statement, whose snapshot keeps them readable until the reader is
    closed whatever writers do meanwhile.
    """

    def __init__(self, using: str, version: uuid.UUID, first: int, last: int) -> None:
        self.version = version
        self.first = first
        self.last = last
        self.session = _Session(using)
        self.cursor: Any = None
        self.rows: list[bytes] = []

    async def open(self) -> None:
        """Run the query."""
        await self.session.open()
        try:
            await self.session.call(self._execute)
        except BaseException:
            await self.close()
            raise

    async def next_chunk(self) -> bytes | None:
        """Return the next chunk, or None after the last."""
        if not self.rows:
            self.rows = await self.session.call(self._fetch)
        return self.rows.pop(0) if self.rows else None

    async def close(self) -> None:
        """Release the cursor and the reader's own connection."""
        cursor, self.cursor = self.cursor, None
        if cursor is not None:
            await self.session.call(cursor.close)
        await self.session.close()

    def _execute(self) -> None:
        connection = self.session.connection
        if connection.vendor == "postgresql" and self.session.private:
            # A server-side cursor lives in a transaction: one statement, one snapshot.
            connection.set_autocommit(False)
        self.cursor = cursor_for(connection, binary=binary_postgresql(connection), streaming=True)
        with connection.wrap_database_errors:
            self.cursor.execute(*self._query())

    def _fetch(self) -> list[bytes]:
        with self.session.connection.wrap_database_errors:
            rows = self.cursor.fetchmany(CHUNKS_PER_FETCH)
        return [_bytes(data) for (data,) in rows]

    def _query(self) -> tuple[str, list[Any]]:
        from blobstore.models import BlobChunk

        values = {"version": self.version, "index": 0, "data": b""}
        table, prepared = _prepared(BlobChunk, self.session.connection, values)
        (version, version_value), (index, _), (data, _) = prepared.items()
        sql = (
            f"SELECT {data} FROM {table} WHERE {version} = %s "
            f"AND {index} BETWEEN %s AND %s ORDER BY {index}"
        )
        return sql, [version_value, self.first, self.last]


class _ChunkSink:
    """Writes an upload's chunks, on a connection of its own outside a transaction."""

    def __init__(self, using: str, timeout: float) -> None:
        self.session = _Session(using, fast_commits=True)
        self.timeout = timeout

    async def open(self) -> None:
        """Choose the connection."""
        await self.session.open()

    async def insert(self, version: uuid.UUID, index: int, data: BytesLike) -> None:
        """Store chunk number index of version."""
        connection = self.session.connection
        await self.session.call(
            _writing, connection, self.timeout, self._insert, version, index, data
        )

    async def close(self) -> None:
        """Close the sink's own connection."""
        await self.session.close()

    def _insert(
        self,
        version: uuid.UUID,
        index: int,
        data: BytesLike,
    ) -> None:
        connection = self.session.connection
        from blobstore.models import BlobChunk

        values = {"version": version, "index": index, "data": data, "created": timezone.now()}
        table, prepared = _prepared(BlobChunk, connection, values)
        sql = f"INSERT INTO {table} ({', '.join(prepared)}) VALUES ({_marks(prepared)})"
        execute(connection, sql, list(prepared.values()))


class _Session:
    """The connection for one long operation: its own outside a transaction, else the caller's.

    A connection of its own keeps a statement's snapshot, or a run of
    writes, apart from everything else, and needs no turn on the thread
    where Django's connections live. Inside the caller's transaction (or on
    an in-memory database) only the caller's connection sees the data.
    """

    def __init__(self, using: str, *, fast_commits: bool = False) -> None:
        self.using = using
        self.fast_commits = fast_commits
        self.private = False
        self._connection: BaseDatabaseWrapper | None = None

    @property
    def connection(self) -> BaseDatabaseWrapper:
        assert self._connection is not None, "the session is not open"
        return self._connection

    async def open(self) -> None:
        """Choose the connection; Django's (and its transaction) is known on its own thread only."""
        await sync_to_async(self._choose)()
        if self.private and self.fast_commits and self.connection.vendor == "postgresql":
            # Chunks count only once the blob row names them, and that
            # commit waits for the WAL, chunks included: theirs need not.
            await self.call(execute, self.connection, "SET synchronous_commit = off", [])

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Return function(*args), run where the connection may be used, to its end."""
        # Run to its end: another thread must not take the connection meanwhile.
        return await run_to_end(sync_to_async(function, thread_sensitive=not self.private)(*args))

    async def close(self) -> None:
        """Close the session's own connection."""
        connection, self._connection = self._connection, None
        if connection is not None and self.private:
            await self.call(self._release, connection)

    def _release(self, connection: BaseDatabaseWrapper) -> None:
        # With Django's connection pool, close() hands the connection to
        # another user, who must get the usual durability back.
        if self.fast_commits and connection.vendor == "postgresql":
            with contextlib.suppress(DatabaseError):
                execute(connection, "RESET synchronous_commit", [])
        connection.close()

    def _choose(self) -> None:
        shared = connections[self.using]
        self.private = not (shared.in_atomic_block or in_memory(shared))
        if self.private:
            self._connection = connections.create_connection(self.using)
            self._connection.inc_thread_sharing()  # used from the thread pool, a call at a time
        else:
            self._connection = shared


def _writing(
    connection: BaseDatabaseWrapper, timeout: float, function: Callable[..., T], *args: Any
) -> T:
    """Return function(*args), a write on connection, tried again while the database is busy.

    Writes to one SQLite database take turns within the process: SQLite
    fails a transaction that must wait for another writer at once, whatever
    its busy timeout, unless the site made it IMMEDIATE. Between processes,
    and on PostgreSQL after a deadlock, the whole write is tried again until
    timeout seconds have passed. Inside the caller's transaction a failed
    write cannot be tried again: its error goes to the caller.
    """
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        retriable = not connection.in_atomic_block
        try:
            with _turn(connection):
                return function(*args)
        except DatabaseError as error:
            if not (retriable and _busy(error)) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


_SQLITE_TURNS: dict[str, threading.Lock] = {}
_SQLITE_TURNS_LOCK = threading.Lock()


@contextlib.contextmanager
def _turn(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Hold the process's turn to write to connection's database, if it is SQLite."""
    if connection.vendor != "sqlite":
        yield
        return
    with _SQLITE_TURNS_LOCK:
        turn = _SQLITE_TURNS.setdefault(str(connection.settings_dict["NAME"]), threading.Lock())
    with turn:
        yield


def _busy(error: DatabaseError) -> bool:
    """Return whether error means another writer was in the way: locked, or a deadlock."""
    cause = error.__cause__ or error
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return getattr(cause, "sqlstate", None) in _RETRIED_SQLSTATES


def _as_field_takes(
    moment: datetime.datetime | None, connection: BaseDatabaseWrapper
) -> datetime.datetime | None:
    """Return an aware moment as connection's DateTimeField takes it.

    Without USE_TZ, a database with no time zones (SQLite) takes local time,
    naive, and Django refuses an aware one; PostgreSQL takes the aware moment
    whatever its session's time zone.
    """
    if moment is None or settings.USE_TZ or connection.features.supports_timezones:
        return moment
    return timezone.make_naive(moment)


def _as_django_gives(value: datetime.datetime | str) -> datetime.datetime:
    """Return a DateTimeField's value, as the database gave it raw, as Django's queries give it.

    Aware in UTC with USE_TZ; in local time, naive, without it.
    """
    if isinstance(value, str):  # SQLite keeps ISO text
        value = datetime.datetime.fromisoformat(value)
    if settings.USE_TZ:
        return value if timezone.is_aware(value) else timezone.make_aware(value, datetime.UTC)
    local: datetime.datetime = naive_local(value)  # psycopg's binary results are aware
    return local


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    # SQLite keeps a UUIDField as 32 hex digits.
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _bytes(data: bytes | memoryview | bytearray) -> bytes:
    return data if type(data) is bytes else bytes(data)


def _quoted(using: str, column: str) -> str:
    return str(connections[using].ops.quote_name(column))


def _prepared(
    model: type[models.Model], connection: BaseDatabaseWrapper, values: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Return the quoted table of model, and quoted columns with their database values."""
    quote = connection.ops.quote_name
    prepared = {}
    for name, value in values.items():
        field = model._meta.get_field(name)
        assert isinstance(field, models.Field)
        prepared[quote(str(field.column))] = field.get_db_prep_save(value, connection)
    return quote(str(model._meta.db_table)), prepared


def _marks(columns: Sized) -> str:
    return ", ".join(["%s"] * len(columns))
