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
:meth:`~ChunkedStorage.purge`.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from blobstore.storage.base import (
    BaseStorage,
    BlobInfo,
    BlobStream,
    BytesLike,
    Upload,
    slices,
    validate_digest,
    validate_key,
    validate_range,
)

CHUNK_SIZE = 1024 * 1024
"""The size of every chunk of a blob but the last, in bytes."""

ORPHAN_AGE = datetime.timedelta(hours=1)
"""How long :meth:`ChunkedStorage.purge` waits before it takes an upload for abandoned."""

_ATTEMPTS = 5


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

    def info(self) -> BlobInfo:
        """Return the record that this version will have."""
        return BlobInfo(self.key, self.size, self.updated, self.sha256)


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
    ) -> BlobInfo | None:
        """Store the concatenated chunks under key; return the new record, or None.

        None means that ``if_absent`` or ``if_sha256`` did not hold; then, as
        when this raises, the previous blob is left as it was.
        """
        validate_key(key)
        if if_sha256 is not None:
            validate_digest(if_sha256)
        upload = Upload(chunks, self.max_object_size)
        pieces = upload.pieces(self.chunk_size)
        head = await anext(pieces)
        version = uuid.uuid4()  # named by the row only if the blob has chunks
        sink: ChunkSink | None = None
        # One chunk goes to the database while the next one arrives.
        inserting: asyncio.Future[None] | None = None
        try:
            index = 0
            async for piece in pieces:
                if sink is None:
                    await self.purge()
                    sink = await self._open_sink()
                if inserting is not None:
                    await inserting
                index += 1
                inserting = asyncio.ensure_future(sink.insert(version, index, piece))
            if inserting is not None:
                await inserting
            row = Version(
                key, head, upload.size, upload.sha256, version if sink else None, self._now()
            )
            stored = await self._commit(row, if_absent=if_absent, if_sha256=if_sha256)
        except BaseException:
            if inserting is not None:
                await asyncio.wait([inserting])  # let it finish before its sink closes
            await self._end_upload(sink, version)
            raise
        await self._end_upload(sink, None if stored else version)
        return row.info() if stored else None

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

    async def purge(self, *, older_than: datetime.timedelta = ORPHAN_AGE) -> int:
        """Delete the chunks of uploads that stopped before committing; return how many.

        A process killed in the middle of an upload leaves the chunks it had
        written, which no blob names. Uploads still under way keep theirs:
        only versions whose newest chunk is older than older_than go.
        """
        raise NotImplementedError

    async def _read_head(self, key: str) -> tuple[BlobInfo, bytes, uuid.UUID | None] | None:
        """Return the record, the head and the version of the blob under key, or None."""
        raise NotImplementedError

    async def _open_chunks(self, version: uuid.UUID, first: int, last: int) -> ChunkSource:
        """Open the chunks numbered first to last of version, on one snapshot of the data."""
        raise NotImplementedError

    async def _open_sink(self) -> ChunkSink:
        """Return where an upload's chunks go."""
        raise NotImplementedError

    async def _commit(self, row: Version, *, if_absent: bool, if_sha256: str | None) -> bool:
        """Point row.key at row atomically if the condition holds, dropping the old chunks."""
        raise NotImplementedError

    async def _discard(self, version: uuid.UUID) -> None:
        """Delete the chunks of version, which no blob names."""
        raise NotImplementedError

    def _now(self) -> datetime.datetime:
        """Return the time to record as a version's update."""
        return datetime.datetime.now(datetime.UTC)

    async def _end_upload(self, sink: ChunkSink | None, version: uuid.UUID | None) -> None:
        """Close the upload's sink, if it has one, and delete the chunks of version, if given."""
        if sink is None:
            return
        await sink.close()
        if version is not None:
            await self._discard(version)


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
