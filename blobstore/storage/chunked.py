"""What the backends that keep large blobs in chunk rows share: ``write`` and ``stream``.

A blob of up to :data:`CHUNK_SIZE` bytes is one row. A larger blob keeps its
first chunk (the head) in that row and the rest in chunk rows of a version
of its own, numbered from 1. An upload writes its chunks first, where no
reader looks, then one atomic step points the blob's row at the new version
and drops the old version's chunks. So a reader sees one version whole, and
an upload that fails leaves the previous blob as it was. A backend supplies
the database steps: :meth:`ChunkedStorage._read_head`,
:meth:`~ChunkedStorage._open_chunks`, :meth:`~ChunkedStorage._open_sink`,
:meth:`~ChunkedStorage._commit`, :meth:`~ChunkedStorage._discard` and
:meth:`~ChunkedStorage._purge_batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from blobstore.storage.base import (
    ORPHAN_AGE,
    PLAIN,
    Attributes,
    BaseStorage,
    BlobInfo,
    BlobStream,
    BytesLike,
    Upload,
    run_to_end,
    slices,
    validate_digest,
    validate_key,
    validate_range,
)

CHUNK_SIZE = 1024 * 1024
"""The size of every chunk of a blob but the last, in bytes."""


PURGE_BATCH = 16
"""How many expired blobs and abandoned versions one batch of :meth:`ChunkedStorage.purge` takes."""

_ATTEMPTS = 5

logger = logging.getLogger("blobstore")


@dataclass(frozen=True, slots=True)
class Version:
    """A version of a blob about to be committed: the values of its row."""

    key: str
    head: BytesLike
    size: int
    sha256: str
    version: uuid.UUID | None
    """Names the chunk rows after the head; None when the head is the whole blob."""
    updated: datetime.datetime
    attributes: Attributes = PLAIN

    def info(self, created: datetime.datetime) -> BlobInfo:
        """Return the record that this version has, once committed on a key created then."""
        attributes = self.attributes
        return BlobInfo(
            self.key,
            self.size,
            self.updated,
            self.sha256,
            attributes.content_type,
            attributes.metadata,
            created,
            attributes.expires,
        )


class ChunkSink(Protocol):
    """Where an upload writes its chunk rows."""

    async def insert(self, version: uuid.UUID, index: int, data: BytesLike) -> None:
        """Store chunk number index of version."""
        ...

    async def close(self) -> None:
        """Release what the sink holds."""
        ...


class ChunkSource(Protocol):
    """The chunk rows of one version, from a first to a last number, in order."""

    async def next_chunk(self) -> bytes | None:
        """Return the next chunk, or None after the last."""
        ...

    async def close(self) -> None:
        """Release what the source holds; closing again does nothing."""
        ...


class ChunkedStorage(BaseStorage):
    """``write`` and ``stream`` over a backend's head rows and chunk rows."""

    chunk_size = CHUNK_SIZE

    async def write(
        self,
        key: str,
        chunks: AsyncIterable[BytesLike],
        *,
        if_absent: bool = False,
        if_sha256: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires: datetime.datetime | None = None,
    ) -> BlobInfo | None:
        """Store the concatenated chunks under key; return the new record, or None.

        None means that ``if_absent`` or ``if_sha256`` did not hold; then, as
        when this raises, the previous blob is left as it was.
        """
        validate_key(key)
        if if_sha256 is not None:
            validate_digest(if_sha256)
        attributes = Attributes.validated(content_type, metadata, expires)
        upload = Upload(chunks, self.max_object_size)
        pieces = upload.pieces(self.chunk_size)
        head = await anext(pieces)
        rows = _ChunkWriter(self)
        try:
            async for piece in pieces:
                await rows.add(piece)
        except BaseException:
            # The body failed, went over the limit or was cancelled: nothing changes.
            await run_to_end(rows.abandon())
            raise
        version = rows.version if rows.used else None
        row = Version(key, head, upload.size, upload.sha256, version, self._now(), attributes)
        # From here on the outcome is the database's: the commit and its
        # cleanup run to their end even if the caller stops waiting.
        created = await run_to_end(
            self._finish(rows, row, if_absent=if_absent, if_sha256=if_sha256)
        )
        return None if created is None else row.info(created)

    async def _finish(
        self, rows: _ChunkWriter, row: Version, *, if_absent: bool, if_sha256: str | None
    ) -> datetime.datetime | None:
        """Commit row once its chunks are in; drop its chunks unless it was stored."""
        try:
            await rows.flush()
            created = await self._commit(row, if_absent=if_absent, if_sha256=if_sha256)
        except BaseException:
            await rows.abandon()
            raise
        if created is None:
            await rows.abandon()
        else:
            await rows.close()
        return created

    async def stream(
        self, key: str, *, start: int = 0, stop: int | None = None
    ) -> BlobStream | None:
        """Open the bytes ``[start, stop)`` of the blob under key as a stream, or return None.

        The stream yields the version it found, whole, even if the blob is
        replaced or evicted while it is being read.
        """
        validate_key(key)
        for _ in range(_ATTEMPTS):
            found = await self._read_head(key)
            if found is None:
                return None
            info, head, version = found
            first, last = validate_range(info.size, start, stop)
            if version is None or last <= len(head):
                return BlobStream(info, first, last, slices(head, first, last))
            span = _ChunkSpan(len(head), first, last, self.chunk_size)
            source = await self._open_chunks(version, span.first_index, span.last_index)
            chunk = await source.next_chunk()
            if chunk is not None:
                chunks = _assemble(head, span, chunk, source)
                return BlobStream(info, first, last, chunks, on_close=source.close)
            await source.close()  # the version is gone: the blob was replaced; look again
        # Only a writer replacing this key over and over gets here.
        raise RuntimeError(f"The blob {key!r} kept changing while it was being opened.")

    async def purge(
        self, *, older_than: datetime.timedelta = ORPHAN_AGE, batches: int | None = None
    ) -> int:
        """Delete expired blobs and the chunks of abandoned uploads; return how many rows went.

        A process killed in the middle of an upload leaves the chunks it had
        written, which no blob names. Uploads still under way keep theirs:
        only versions whose newest chunk is older than older_than go. Each
        batch of up to :data:`PURGE_BATCH` blobs and versions is a transaction
        of its own, so that a purge run from cron never holds the database for
        long; batches bounds how many run (all, by default).
        """
        deleted = 0
        while batches is None or batches > 0:
            found, rows = await run_to_end(self._purge_batch(older_than, PURGE_BATCH))
            deleted += rows
            if found < PURGE_BATCH:
                break
            batches = None if batches is None else batches - 1
        return deleted

    async def _purge_batch(self, older_than: datetime.timedelta, limit: int) -> tuple[int, int]:
        """Delete up to limit expired blobs and abandoned versions each.

        Return how many of them it found, and how many rows it deleted.
        """
        raise NotImplementedError

    async def _read_head(self, key: str) -> tuple[BlobInfo, bytes, uuid.UUID | None] | None:
        """Return the record, the head and the version of the blob under key, or None."""
        raise NotImplementedError

    async def _open_chunks(self, version: uuid.UUID, first: int, last: int) -> ChunkSource:
        """Open the chunks numbered first to last of version, on one snapshot of the data."""
        raise NotImplementedError

    async def _open_upload(self) -> ChunkSink:
        """Return where an upload's chunks go, after purging a batch of abandoned uploads."""
        await self.purge(batches=1)
        return await self._open_sink()

    async def _open_sink(self) -> ChunkSink:
        """Return where an upload's chunks go."""
        raise NotImplementedError

    async def _commit(
        self, row: Version, *, if_absent: bool, if_sha256: str | None
    ) -> datetime.datetime | None:
        """Point row.key at row atomically if the condition holds, dropping the old chunks.

        Return when the key was created, or None if the condition did not hold.
        """
        raise NotImplementedError

    async def _discard(self, version: uuid.UUID) -> None:
        """Delete the chunks of version, which no blob names."""
        raise NotImplementedError

    def _now(self) -> datetime.datetime:
        """Return the time to record as a version's update."""
        # The clock that reads compare expiry with, so that the two agree.
        return datetime.datetime.fromtimestamp(time.time(), datetime.UTC)


class _ChunkWriter:
    """The chunk rows of a version being written: one goes in while the next arrives.

    Every step is awaited to its end (see :func:`run_to_end`), so that the
    sink's connection is never used by two threads at once and a version is
    only dropped once no insert of it is under way.
    """

    def __init__(self, storage: ChunkedStorage) -> None:
        self.storage = storage
        self.count = 0
        self._sink: ChunkSink | None = None
        self._inserting: asyncio.Task[None] | None = None

    @functools.cached_property
    def version(self) -> uuid.UUID:
        """Return the version's id, made when its first chunk is added: most blobs have none."""
        return uuid.uuid4()

    @property
    def used(self) -> bool:
        """Return whether the version has chunk rows, that is, the blob is larger than its head."""
        return self.count > 0

    async def add(self, piece: BytesLike) -> None:
        """Start inserting piece as the next chunk, once the previous one is in."""
        if self._sink is None:
            await run_to_end(self._open())
        assert self._sink is not None
        await self.flush()
        self.count += 1
        self._inserting = asyncio.ensure_future(self._sink.insert(self.version, self.count, piece))

    async def _open(self) -> None:
        # Kept as soon as it is open, so that abandon() closes it after a cancellation.
        self._sink = await self.storage._open_upload()

    async def flush(self) -> None:
        """Wait until every chunk added is in."""
        inserting, self._inserting = self._inserting, None
        if inserting is not None:
            await run_to_end(inserting)

    async def close(self) -> None:
        """Release the sink; the chunks stay, named by the committed row."""
        sink, self._sink = self._sink, None
        if sink is not None:
            await run_to_end(sink.close())

    async def abandon(self) -> None:
        """Stop, release the sink and delete the version's chunks; never raise for the cleanup."""
        # An insert that failed left no chunk to delete.
        with contextlib.suppress(Exception):
            await self.flush()
        try:
            await self.close()
            if self.used:
                await run_to_end(self.storage._discard(self.version))
        except Exception:
            # The database went away: purge() deletes the chunks later.
            logger.warning("Could not delete the chunks of abandoned version %s.", self.version)


GROUP_LIMIT = 64
"""How many small writes one commit takes at most: 640 parameters for rows of ten
columns, under the oldest SQLite's limit of 999 per statement."""


def last_of_each_key(rows: list[Version]) -> list[tuple[Version, datetime.datetime]]:
    """Return the last row of each key, with the time the key's first row was made.

    Committing those alone, the key created at that time if it is new, leaves
    what committing every row in turn would: the last row wins, and the first
    one created the key.
    """
    created: dict[str, datetime.datetime] = {}
    last: dict[str, Version] = {}
    for row in rows:
        created.setdefault(row.key, row.updated)
        last[row.key] = row
    return [(row, created[key]) for key, row in last.items()]


class CommitGroup:
    """Small writes that come at once, committed together: one transaction for many.

    A writer's commit waits while the group's current transaction runs; the
    writes that arrived meanwhile, up to GROUP_LIMIT, go together in the next one.
    Each writer is answered once its row is committed, so nothing is
    acknowledged earlier than one commit of its own would be.
    """

    def __init__(
        self, commit_many: Callable[[list[Version]], Awaitable[list[datetime.datetime | None]]]
    ) -> None:
        self.commit_many = commit_many
        # Per event loop: a storage may be used from several (async_to_sync makes one per call).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def commit(self, row: Version) -> datetime.datetime | None:
        """Commit row with the others of the moment; return what commit_many says of it."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        answer: asyncio.Future[datetime.datetime | None] = loop.create_future()
        queue.waiting.append((row, answer))
        if queue.committing is None:
            queue.committing = committing = asyncio.ensure_future(self._run(queue))
            # Cancelled before it began (its loop closing), it never runs _run's finally.
            committing.add_done_callback(functools.partial(_release_if_left, queue))
        return await run_to_end(answer)

    async def _run(self, queue: _Queue) -> None:
        try:
            while queue.waiting:
                group, queue.waiting = queue.waiting[:GROUP_LIMIT], queue.waiting[GROUP_LIMIT:]
                rows = [row for row, _ in group]
                statement = asyncio.ensure_future(self.commit_many(rows))
                try:
                    # To its end even if this task is cancelled: its writers wait to
                    # hear how it ended, and its work may be in a thread.
                    await run_to_end(statement)
                except Exception:
                    pass  # each writer hears it below
                finally:
                    _answer(group, statement)
        finally:
            _release(queue)


def _answer(
    group: list[tuple[Version, asyncio.Future[datetime.datetime | None]]],
    statement: asyncio.Future[list[datetime.datetime | None]],
) -> None:
    """Tell each writer of group how statement, which is done, ended for its row."""
    if statement.cancelled():
        for _, answer in group:
            answer.cancel()
    elif (error := statement.exception()) is not None:
        for _, answer in group:
            answer.set_exception(error)
    else:
        for (_, answer), result in zip(group, statement.result(), strict=True):
            answer.set_result(result)


def _release(queue: _Queue) -> None:
    """Let the next writer start a task; cancel the writers whose rows were never sent."""
    queue.committing = None
    left, queue.waiting = queue.waiting, []
    for _, answer in left:
        answer.cancel()


def _release_if_left(queue: _Queue, task: asyncio.Future[None]) -> None:
    if queue.committing is task:
        _release(queue)


@dataclass(slots=True)
class _Queue:
    waiting: list[tuple[Version, asyncio.Future[datetime.datetime | None]]] = field(
        default_factory=list
    )
    committing: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class _ChunkSpan:
    """Which chunks hold the bytes [start, stop) of a blob whose head has head_size bytes."""

    head_size: int
    start: int
    stop: int
    chunk_size: int

    @property
    def first_index(self) -> int:
        return 1 + max(0, self.start - self.head_size) // self.chunk_size

    @property
    def last_index(self) -> int:
        return 1 + (self.stop - 1 - self.head_size) // self.chunk_size

    @property
    def offset(self) -> int:
        """Where the first chunk of the span starts in the blob."""
        return self.head_size + (self.first_index - 1) * self.chunk_size


async def _assemble(
    head: bytes, span: _ChunkSpan, chunk: bytes, source: ChunkSource
) -> AsyncIterator[bytes]:
    """Yield the span's bytes from the head, then from chunk and the source's other chunks."""
    try:
        async for piece in slices(head, span.start, min(span.stop, len(head))):
            yield piece
        offset = span.offset
        while True:
            low, high = max(span.start - offset, 0), min(span.stop - offset, len(chunk))
            yield chunk if (low, high) == (0, len(chunk)) else chunk[low:high]
            offset += len(chunk)
            if offset >= span.stop:
                return
            following = await source.next_chunk()
            if following is None:
                raise RuntimeError("A chunk of the blob is missing.")
            chunk = following
    finally:
        await source.close()
