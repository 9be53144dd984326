"""The storage contract that every blobstore backend keeps.

A storage maps string keys to binary blobs. The five coroutine methods of
:class:`Storage` are ProxyStore's endpoint storage protocol
(``proxystore.endpoint.storage.Storage``) with the same names, signatures and
meaning, so any blobstore backend can serve as a ProxyStore endpoint's storage.
Every built-in backend also keeps these rules, which one conformance suite
(``tests/test_storage.py``) proves for all of them:

Keys
    A key is a non-empty ``str`` of at most :data:`MAX_KEY_LENGTH` bytes in
    UTF-8 (as S3 counts), with no control character (U+0000 to U+001F,
    U+007F) and no lone surrogate. Any other ``str`` raises ``ValueError``; a
    value that is not a ``str`` raises ``TypeError``. Every method checks its
    key, so a key that could never be stored is reported, not silently
    "absent"; and every valid key fits every database's key index and every
    route of the HTTP API.

Blobs
    ``set`` accepts ``bytes``, ``bytearray`` and ``memoryview`` and stores their
    bytes; ``get`` always returns ``bytes``. ``b''`` is a blob, distinct from
    absence. A blob larger than the storage's ``max_object_size`` raises
    :class:`~blobstore.exceptions.ObjectSizeExceededError` (a ``ValueError``);
    anything else raises ``TypeError``. When a method raises, nothing was
    written.

Semantics
    ``set`` replaces silently; ``evict`` of an absent key does nothing;
    ``exists`` is true exactly when ``get`` would find the key. Many coroutines
    may use one storage at once.

Life cycle
    Constructors take options only and open nothing: a connection is opened on
    first use. ``close()`` releases what was opened; a storage that keeps its
    blobs outside the process (SQLite, the ORM) can be used again after
    ``close()`` and still finds them. Every backend is an async context manager
    that closes itself on exit.

Listing
    :meth:`ListingStorage.list_blobs` returns :class:`BlobInfo` records in key
    order (by code point), filtered by prefix and paged by the last key seen.

Metadata and conditional writes
    :class:`BlobStorage` adds what an HTTP API needs: :meth:`~BlobStorage.stat`
    and :meth:`~BlobStorage.fetch` (the blob and its record, read together),
    and two writes that check a condition atomically with the write:
    :meth:`~BlobStorage.create` and :meth:`~BlobStorage.replace`.

Streaming
    :class:`StreamingStorage` reads and writes blobs in bounded chunks, so that
    a blob never has to sit whole in memory. :meth:`~StreamingStorage.stream`
    opens one version of a blob (or a byte range of it) as a
    :class:`BlobStream`; a reader sees that version whole even while another
    writer replaces or evicts the key. :meth:`~StreamingStorage.write` stores
    a blob from an async iterable of chunks: the new version becomes visible
    at once and whole when the last chunk is in, and an upload that fails,
    is cancelled or goes over ``max_object_size`` leaves the previous version
    as it was. The whole-bytes methods above keep ProxyStore's protocol
    exactly; the streaming ones sit beside them.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import re
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, TypeVar, runtime_checkable

from blobstore.exceptions import ObjectSizeExceededError

OCTET_STREAM = "application/octet-stream"
"""The content type of a blob stored without one."""

MAX_CONTENT_TYPE_LENGTH = 255
MAX_METADATA_SIZE = 2048
"""The most bytes that the names and values of a blob's metadata may add up to."""

MAX_KEY_LENGTH = 1024
"""The longest key, in bytes of its UTF-8 form."""

DEFAULT_MAX_OBJECT_SIZE = 100 * 1024 * 1024
"""The largest blob a storage accepts unless told otherwise, in bytes (100 MiB)."""

ORPHAN_AGE = datetime.timedelta(hours=1)
"""How long :meth:`BaseStorage.purge` waits before it takes an upload for abandoned."""

DEFAULT_PAGE_SIZE = 1000
"""How many records :meth:`ListingStorage.list_blobs` returns unless told otherwise."""

STREAM_CHUNK_SIZE = 1024 * 1024
"""The size of the chunks that :class:`BlobStream` yields, in bytes, but for the last."""

BytesLike = bytes | bytearray | memoryview
"""What ``set`` accepts: ``bytes`` and any flat view of bytes."""

T = TypeVar("T")

_FIRST_SURROGATE, _LAST_SURROGATE = 0xD800, 0xDFFF
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*'
)
_METADATA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@runtime_checkable
class Storage(Protocol):
    """ProxyStore's endpoint storage protocol for blobs."""

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        ...

    async def set(self, key: str, blob: bytes) -> None:
        """Store blob under key, replacing any blob already there."""
        ...

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        ...

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        ...

    async def close(self) -> None:
        """Release the resources that the storage holds."""
        ...


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a storage knows about one blob besides its bytes."""

    key: str
    size: int
    updated: datetime.datetime
    sha256: str
    """The hex SHA-256 digest of the blob."""
    content_type: str = OCTET_STREAM
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The user's own names and values, as :func:`validate_metadata` allows them."""
    created: datetime.datetime | None = None
    """When the key got its first blob; every built-in backend records it."""
    expires: datetime.datetime | None = None
    """When the blob stops being readable, if ever."""


@runtime_checkable
class ListingStorage(Storage, Protocol):
    """A storage that can also enumerate its keys."""

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        ...

    async def list_folder(
        self,
        prefix: str = "",
        *,
        delimiter: str = "/",
        after: str = "",
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[BlobInfo | str]:
        """Return up to limit blobs directly under prefix and sub-prefixes, after `after`."""
        ...


@runtime_checkable
class BlobStorage(ListingStorage, Protocol):
    """A storage that also keeps metadata and writes on conditions."""

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob (bytes or a view of bytes) under key, replacing any blob there."""
        ...

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        ...

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of one version of the blob, or None."""
        ...

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        ...

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        ...


class BlobStream:
    """One version of a blob, or the byte range ``[start, stop)`` of it, read in chunks.

    Iterate it with ``async for``; close it (``async with`` does) when done, to
    release what the storage holds open for it.
    """

    def __init__(
        self,
        info: BlobInfo,
        start: int,
        stop: int,
        chunks: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.info = info
        self.start = start
        self.stop = stop
        self._chunks = chunks
        # Releases what was opened for the chunks, even if they were never read.
        self._on_close = on_close

    @property
    def length(self) -> int:
        """Return how many bytes the stream yields."""
        return self.stop - self.start

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def read(self) -> bytes:
        """Return the rest of the stream as one bytes object."""
        buffer = io.BytesIO()
        async for chunk in self._chunks:
            buffer.write(chunk)
        return buffer.getvalue()

    async def aclose(self) -> None:
        """Stop reading and release what the storage holds for the stream."""
        aclose = getattr(self._chunks, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            if self._on_close is not None:
                await self._on_close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class StreamingStorage(BlobStorage, Protocol):
    """A storage that also reads and writes blobs in chunks, with bounded memory."""

    async def stream(
        self, key: str, *, start: int = 0, stop: int | None = None
    ) -> BlobStream | None:
        """Open the bytes ``[start, stop)`` of the blob under key as a stream, or return None."""
        ...

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
        """Store the concatenated chunks under key; return the new record.

        With ``if_absent`` the blob is stored only if the key is free, with
        ``if_sha256`` only if the current blob has that digest; either way
        the check and the write are atomic, and None means the check failed.
        The content type, metadata and expiry replace the old blob's too.
        """
        ...


def validate_range(size: int, start: object, stop: object) -> tuple[int, int]:
    """Return start and stop clamped to a blob of size bytes, or raise TypeError or ValueError."""
    for name, value in (("start", start), ("stop", stop)):
        if value is None and name == "stop":
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}.")
        if value < 0:
            raise ValueError(f"{name} must not be negative, not {value}.")
    if stop is not None and stop < start:  # type: ignore[operator]
        raise ValueError(f"stop ({stop}) must not be less than start ({start}).")
    first = min(start, size)  # type: ignore[call-overload]
    last = size if stop is None else min(stop, size)  # type: ignore[call-overload]
    return first, last


class Upload:
    """The chunks of a blob being written, checked, counted and hashed as they pass.

    Iterating :meth:`checked` or :meth:`pieces` raises ``TypeError`` for a
    chunk that is not bytes-like, and
    :class:`~blobstore.exceptions.ObjectSizeExceededError` as soon as the
    total is over ``max_object_size``.
    """

    def __init__(self, chunks: AsyncIterable[BytesLike], max_object_size: int | None) -> None:
        if not isinstance(chunks, AsyncIterable):
            raise TypeError(f"chunks must be an async iterable, not {type(chunks).__name__}.")
        self.chunks = chunks
        self.max_object_size = max_object_size
        self.size = 0
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        """Return the hex SHA-256 of the bytes read so far."""
        return self._digest.hexdigest()

    async def checked(self) -> AsyncIterator[bytes | memoryview]:
        """Yield the chunks as they come, once counted and checked, without hashing them."""
        async for chunk in self.chunks:
            yield self._count(chunk, hashed=False)

    async def pieces(self, size: int) -> AsyncIterator[BytesLike]:
        """Yield the blob in pieces of size bytes, hashed, none of which changes afterwards.

        The last piece may be shorter, and there is at least one.
        """
        pending = bytearray()
        async for chunk in self.chunks:
            data = memoryview(self._count(chunk))
            if pending:  # fill the pending piece first
                taken = size - len(pending)
                pending += data[:taken]
                data = data[taken:]
                if len(pending) < size:
                    continue
                piece, pending = pending, bytearray()
                yield piece
            if not isinstance(data.obj, bytes):
                data = memoryview(data.tobytes())  # the caller may reuse its buffer
            # Whole pieces of a large chunk go out as views, without a copy.
            while len(data) >= size:
                yield data[:size]
                data = data[size:]
            pending += data
        if pending or self.size == 0:
            yield pending

    def _count(self, chunk: object, *, hashed: bool = True) -> bytes | memoryview:
        data = validate_blob(chunk)
        self.size += len(data)
        if self.max_object_size is not None and self.size > self.max_object_size:
            raise ObjectSizeExceededError(self.size, self.max_object_size)
        if hashed:
            self._digest.update(data)
        return data


async def run_to_end(awaitable: Awaitable[T]) -> T:
    """Return the result of awaitable, which runs to its end even if the caller is cancelled.

    Work handed to a thread goes on when the coroutine that awaits it is
    cancelled. Every step of a write awaits its database work through this,
    so that whatever runs next, cleanup included, knows how the work ended
    and never shares a connection with it. The caller's cancellation is
    raised once the work is done.
    """
    task = asyncio.ensure_future(awaitable)
    cancellation: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # Unlike await task, a cancelled wait() leaves the task running.
            await asyncio.wait([task])
        except asyncio.CancelledError as error:
            cancellation = error
    if cancellation is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller sees
        raise cancellation
    return task.result()


async def once(blob: bytes | memoryview) -> AsyncIterator[bytes | memoryview]:
    """Yield blob as the only chunk."""
    yield blob


def has_control_character(text: str) -> bool:
    """Return whether text holds a control character (U+0000 to U+001F, U+007F), as no key does."""
    return _CONTROL.search(text) is not None


def validate_key(key: object) -> str:
    """Return key if it is a valid key, or raise TypeError or ValueError."""
    if not isinstance(key, str):
        raise TypeError(f"A key must be a str, not {type(key).__name__}.")
    if key.isascii():
        # Printable ASCII is every ASCII character but the controls.
        if 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable():
            return key
    elif key and _utf8_length(key) <= MAX_KEY_LENGTH and not has_control_character(key):
        return key
    raise ValueError(
        f"A key must be 1 to {MAX_KEY_LENGTH} bytes of UTF-8 text with no control character; "
        f"got {_abbreviate(key)!r}."
    )


def validate_item(key: object, blob: object, max_object_size: int | None) -> bytes | memoryview:
    """Return blob as bytes or a flat byte view after checking it and its key, or raise.

    ``bytes`` comes back as it is; a ``bytearray`` or ``memoryview`` comes back
    as a view of its bytes, so that a backend copies it at most once.
    """
    validate_key(key)
    data = validate_blob(blob)
    if max_object_size is not None and len(data) > max_object_size:
        raise ObjectSizeExceededError(len(data), max_object_size)
    return data


def validate_blob(blob: object) -> bytes | memoryview:
    """Return blob as bytes or a flat byte view (of len() bytes), or raise TypeError."""
    if type(blob) is bytes:
        return blob
    if isinstance(blob, bytes | bytearray | memoryview):
        return _flat_view(blob)
    raise TypeError(f"A blob must be bytes, bytearray or memoryview, not {type(blob).__name__}.")


def validate_content_type(content_type: object) -> str:
    """Return content_type, a media type such as ``text/plain; charset=utf-8``, or raise."""
    if content_type is None:
        return OCTET_STREAM
    if not isinstance(content_type, str):
        raise TypeError(f"content_type must be a str, not {type(content_type).__name__}.")
    if len(content_type) > MAX_CONTENT_TYPE_LENGTH or not _MEDIA_TYPE.fullmatch(content_type):
        raise ValueError(
            f"content_type must be a media type such as 'image/png' of at most "
            f"{MAX_CONTENT_TYPE_LENGTH} characters, not {_abbreviate(content_type)!r}."
        )
    kind, _, parameters = content_type.partition(";")
    return kind.strip().lower() + (f";{parameters}" if parameters else "")


def validate_metadata(metadata: object) -> dict[str, str]:
    """Return metadata as a dict of lower-case names to values, or raise TypeError or ValueError.

    Names are letters, digits, ``-`` and ``_``, so that they travel as HTTP
    headers (``X-Blobstore-Meta-<name>``); values are printable ASCII; all
    of it at most :data:`MAX_METADATA_SIZE` bytes.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}.")
    checked: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("metadata must map str names to str values.")
        if not _METADATA_NAME.fullmatch(name):
            raise ValueError(
                f"A metadata name must be 1 to 64 letters, digits, '-' or '_', not "
                f"{_abbreviate(name)!r}."
            )
        if not (value.isascii() and value.isprintable()):
            raise ValueError(f"The metadata value of {name!r} must be printable ASCII.")
        checked[name.lower()] = value
    size = sum(len(name) + len(value) for name, value in checked.items())
    if size > MAX_METADATA_SIZE:
        raise ValueError(
            f"metadata has {size} bytes of names and values, more than {MAX_METADATA_SIZE}."
        )
    return checked


def validate_expires(expires: object) -> datetime.datetime | None:
    """Return expires if it is None or an aware datetime in the future, or raise."""
    if expires is None:
        return None
    if not isinstance(expires, datetime.datetime):
        raise TypeError(f"expires must be a datetime, not {type(expires).__name__}.")
    if expires.utcoffset() is None:
        raise ValueError("expires must be an aware datetime (with a time zone).")
    if expires <= datetime.datetime.now(datetime.UTC):
        raise ValueError(f"expires must be in the future, not {expires.isoformat()}.")
    return expires


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a write says about a blob besides its bytes."""

    content_type: str = OCTET_STREAM
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires: datetime.datetime | None = None

    @classmethod
    def validated(cls, content_type: object, metadata: object, expires: object) -> Attributes:
        """Return the attributes of a write, checked, or raise TypeError or ValueError."""
        return cls(
            validate_content_type(content_type),
            validate_metadata(metadata),
            validate_expires(expires),
        )


PLAIN = Attributes()
"""The attributes of a blob written without any."""


def validate_digest(sha256: object) -> str:
    """Return sha256 if it is a str, or raise TypeError."""
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a str, not {type(sha256).__name__}.")
    return sha256


def validate_listing(prefix: object, after: object, limit: object) -> None:
    """Raise TypeError or ValueError unless the arguments of a listing are valid."""
    for name, value in (("prefix", prefix), ("after", after)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}.")
        if not _is_utf8(value) or has_control_character(value):
            # No key holds a control character; PostgreSQL refuses NUL in any text.
            raise ValueError(
                f"{name} must be Unicode text with no control character; "
                f"got {_abbreviate(value)!r}."
            )
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}.")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}.")


def validate_max_object_size(max_object_size: object) -> int | None:
    """Return max_object_size if it is None or a positive int, or raise."""
    if max_object_size is None:
        return None
    if not isinstance(max_object_size, int) or isinstance(max_object_size, bool):
        raise TypeError(
            f"max_object_size must be an int or None, not {type(max_object_size).__name__}."
        )
    if max_object_size < 0:
        raise ValueError(f"max_object_size must not be negative, not {max_object_size}.")
    return max_object_size


def prefix_end(prefix: str) -> str | None:
    """Return the least string above every string that starts with prefix, or None.

    Keys sort by code point, which is also the byte order of their UTF-8 form,
    so ``prefix <= key < prefix_end(prefix)`` selects a prefix with an index.
    """
    while prefix:
        successor = ord(prefix[-1]) + 1
        if successor == _FIRST_SURROGATE:
            successor = _LAST_SURROGATE + 1
        if successor <= sys.maxunicode:
            return prefix[:-1] + chr(successor)
        prefix = prefix[:-1]
    return None


def _utf8_length(text: str) -> int:
    """Return the length of text in UTF-8, or one past any limit if it has a lone surrogate."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return sys.maxsize


def _is_utf8(text: str) -> bool:
    # Lone surrogates are valid in a Python str but in no database.
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _flat_view(blob: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(blob)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    # Cast to unsigned bytes, so that len() counts bytes.
    return view.cast("B")


async def slices(data: bytes, start: int, stop: int) -> AsyncIterator[bytes]:
    """Yield the bytes [start, stop) of data in chunks of STREAM_CHUNK_SIZE."""
    view = memoryview(data)
    for offset in range(start, stop, STREAM_CHUNK_SIZE):
        yield bytes(view[offset : min(offset + STREAM_CHUNK_SIZE, stop)])


def _abbreviate(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[:length] + "…"


class BaseStorage:
    """What every built-in backend shares, and the methods that can be built on others.

    A backend overrides the five methods of :class:`Storage` and
    ``list_blobs`` and ``stat``, and either ``stream`` and ``write`` (when it
    streams) or ``fetch`` and ``write``: each default here is built on the
    others, as Django's ``BaseCache`` builds ``get_many`` on ``get``.
    """

    def __init__(self, *, max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE) -> None:
        self.max_object_size = validate_max_object_size(max_object_size)

    async def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """Return the blob for key, or default when there is none."""
        fetched = await self.fetch(key)
        return default if fetched is None else fetched[1]

    async def set(self, key: str, blob: BytesLike) -> None:
        """Store blob under key, replacing any blob already there."""
        await self.write(key, once(validate_item(key, blob, self.max_object_size)))

    async def exists(self, key: str) -> bool:
        """Return whether a blob is stored under key."""
        return await self.stat(key) is not None

    async def evict(self, key: str) -> None:
        """Remove the blob stored under key, if there is one."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the resources that the storage holds."""

    async def list_blobs(
        self, prefix: str = "", *, after: str = "", limit: int = DEFAULT_PAGE_SIZE
    ) -> list[BlobInfo]:
        """Return up to limit records whose keys start with prefix and sort after `after`."""
        raise NotImplementedError

    async def list_folder(
        self,
        prefix: str = "",
        *,
        delimiter: str = "/",
        after: str = "",
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[BlobInfo | str]:
        """Return up to limit blobs directly under prefix and sub-prefixes, after `after`.

        Entries come in key order: a record for each key with no delimiter
        after the prefix, and, for the keys that have one, their prefix up to
        and including it, once. To get the next page, pass the last entry (its
        key, or the prefix itself) as after. Each sub-prefix costs one more
        index range, not a scan of the keys under it.
        """
        validate_listing(prefix, after, limit)
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError(f"delimiter must be a non-empty str, not {delimiter!r}.")
        entries: list[BlobInfo | str] = []
        cursor = after
        while len(entries) < limit:
            page = await self.list_blobs(prefix, after=cursor, limit=limit - len(entries))
            for info in page:
                cut = info.key.find(delimiter, len(prefix))
                if cut < 0:
                    entries.append(info)
                    cursor = info.key
                    continue
                folder = info.key[: cut + len(delimiter)]
                if folder > after:
                    entries.append(folder)
                # Past every key in the folder, but for keys holding U+10FFFF there.
                cursor = folder + chr(sys.maxunicode)
                break
            else:
                if len(page) < limit - len(entries) or not page:
                    break
        return entries

    async def stat(self, key: str) -> BlobInfo | None:
        """Return the record of the blob stored under key, or None."""
        raise NotImplementedError

    async def fetch(self, key: str) -> tuple[BlobInfo, bytes] | None:
        """Return the record and the bytes of one version of the blob, or None."""
        stream = await self.stream(key)
        if stream is None:
            return None
        async with stream:
            return stream.info, await stream.read()

    async def create(self, key: str, blob: BytesLike) -> bool:
        """Store blob under key unless a blob is there; return whether it was stored."""
        data = validate_item(key, blob, self.max_object_size)
        return await self.write(key, once(data), if_absent=True) is not None

    async def replace(self, key: str, blob: BytesLike, *, sha256: str) -> bool:
        """Replace the blob under key if its digest is sha256; return whether it was replaced."""
        data = validate_item(key, blob, self.max_object_size)
        validate_digest(sha256)
        return await self.write(key, once(data), if_sha256=sha256) is not None

    async def stream(
        self, key: str, *, start: int = 0, stop: int | None = None
    ) -> BlobStream | None:
        """Open the bytes ``[start, stop)`` of the blob under key as a stream, or return None."""
        fetched = await self.fetch(key)
        if fetched is None:
            return None
        info, data = fetched
        first, last = validate_range(info.size, start, stop)
        return BlobStream(info, first, last, slices(data, first, last))

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
        raise NotImplementedError

    async def purge(
        self,
        *,
        older_than: datetime.timedelta = datetime.timedelta(hours=1),
        batches: int | None = None,
    ) -> int:
        """Delete expired blobs and what abandoned uploads left; return how many rows went.

        Uploads still under way keep their chunks: only those whose newest
        chunk is older than older_than go. Work goes in batches, each a
        transaction of its own; batches bounds how many run (all, by default).
        """
        return 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
