"""Django's file storage API over a blobstore storage: ``FileField``, ``ImageField``, static files.

Configure it the usual way::

    STORAGES = {
        "default": {
            "BACKEND": "blobstore.files.BlobFileStorage",
            "OPTIONS": {"alias": "default", "location": "media/"},
        },
    }

A file named ``n`` is the blob ``location + n`` of the storage that
``BLOBSTORE_STORAGES[alias]`` configures. Files move in chunks both ways:
:meth:`BlobFileStorage.save` streams its content, and a file that
:meth:`BlobFileStorage.open` returns reads byte ranges of the blob only when
read. Django's storage API is synchronous: each call runs the storage's
coroutines through ``async_to_sync``, so it works from sync views, management
commands and ``sync_to_async``, but not straight from a coroutine, which has
:meth:`~BlobFileStorage.aopen`, :meth:`~BlobFileStorage.asave`,
:meth:`~BlobFileStorage.aexists` and :meth:`~BlobFileStorage.adelete`.

Names are checked as Django checks them (``..`` and absolute names raise
``SuspiciousFileOperation``); a Windows separator ``\\`` is taken for ``/``, as
Django's ``generate_filename`` does, and a drive (``C:``) is refused.
"""

from __future__ import annotations

import datetime
import io
import mimetypes
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage
from django.core.files.utils import validate_file_name
from django.utils import timezone
from django.utils.deconstruct import deconstructible

from blobstore import signing
from blobstore.conf import conf
from blobstore.exceptions import ObjectSizeExceededError
from blobstore.storage import BlobInfo, BlobStream, StreamingStorage, storages
from blobstore.storage.base import (
    OCTET_STREAM,
    STREAM_CHUNK_SIZE,
    BytesLike,
    once,
    validate_key,
)

READ_BUFFER_SIZE = 64 * 1024
"""How much a small read fetches at once, in bytes: enough for an image's header."""

READ_AHEAD_LIMIT = 4 * STREAM_CHUNK_SIZE
"""The most that a read fetches beyond what it asks for, in bytes, when reads go on in order."""


@deconstructible(path="blobstore.files.BlobFileStorage")
class BlobFileStorage(Storage):
    """Keep a Django site's files as blobs of one alias of ``BLOBSTORE_STORAGES``.

    ``allow_overwrite`` (as Django's ``FileSystemStorage`` has it) lets a save
    replace a file of the same name instead of choosing a free name;
    ``url_expires`` is how many seconds a URL from :meth:`url` works.
    """

    def __init__(
        self,
        alias: str = "default",
        location: str = "",
        allow_overwrite: bool = False,
        url_expires: int = signing.DEFAULT_EXPIRES,
    ) -> None:
        if not isinstance(alias, str):
            raise TypeError(f"alias must be a str, not {type(alias).__name__}.")
        if not isinstance(location, str) or location.startswith("/"):
            raise ValueError(f"location must be a key prefix like 'media/', not {location!r}.")
        self.alias = alias
        self.location = location
        self.allow_overwrite = allow_overwrite
        self.url_expires = url_expires

    @property
    def store(self) -> StreamingStorage:
        """Return the blobstore storage that keeps the files."""
        store = storages[self.alias]
        if not isinstance(store, StreamingStorage):
            raise ImproperlyConfigured(
                f"BlobFileStorage needs a storage that streams; BLOBSTORE_STORAGES[{self.alias!r}] "
                f"is a {type(store).__name__}."
            )
        return store

    def key(self, name: str) -> str:
        """Return the key of the blob that holds the file name, or raise if name is unsafe."""
        return validate_key(self.location + clean_name(name))

    # Django's Storage API

    def _open(self, name: str, mode: str = "rb") -> BlobFile:
        if set(mode) - set("rbt"):
            raise ValueError(f"BlobFileStorage opens files for reading only, not {mode!r}.")
        key = self.key(name)
        info = async_to_sync(self.store.stat)(key)
        if info is None:
            raise FileNotFoundError(f"No file is called {name!r}.")
        return BlobFile(self.store, info, name, mode)

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Save content under name, or under a free name like it; return the name it got."""
        if name is not None and (max_length is None or len(name) <= max_length):
            # The name itself first, in one round trip: choosing a free name
            # and then writing, as Django's save() does, takes two.
            validate_file_name(name, allow_relative_path=True)
            file = content if hasattr(content, "chunks") else File(content, name)
            if self._write(name, file, if_absent=not self.allow_overwrite):
                return clean_name(name)
        return super().save(name, content, max_length)

    def _save(self, name: str, content: File[Any]) -> str:
        while not self._write(name, content, if_absent=not self.allow_overwrite):
            # Another save took the name since it was chosen: choose again.
            name = self.get_available_name(name)
        return clean_name(name)

    def _write(self, name: str, content: File[Any], *, if_absent: bool) -> bool:
        """Store content under name; return False if if_absent and the name was taken."""
        try:
            written = async_to_sync(self.store.write)(
                self.key(name),
                _chunks_of(content),
                if_absent=if_absent,
                content_type=mimetypes.guess_type(name)[0] or OCTET_STREAM,
            )
        except ObjectSizeExceededError as large:
            # The storage does not know its alias; this says which setting to raise.
            raise ObjectSizeExceededError(
                large.size, large.max_object_size, alias=self.alias
            ) from None
        return written is not None

    def is_name_available(self, name: str, max_length: int | None = None) -> bool:
        """Return whether a save may use name: free, or taken but allowed to be overwritten."""
        if max_length and len(name) > max_length:
            return False
        # A file may share its name with a directory: only files take names.
        return self.allow_overwrite or not async_to_sync(self.store.exists)(self.key(name))

    def get_alternative_name(self, file_root: str, file_ext: str) -> str:
        """Return another name to try, or the same one when files may be overwritten."""
        if self.allow_overwrite:
            return f"{file_root}{file_ext}"
        return super().get_alternative_name(file_root, file_ext)

    def exists(self, name: str) -> bool:
        """Return whether a file, or a directory of files, is called name."""
        return async_to_sync(self.aexists)(name)

    def delete(self, name: str) -> None:
        """Delete the file called name; a name with no file is no error."""
        if not name:
            raise ValueError("The name must be given to delete().")
        async_to_sync(self.store.evict)(self.key(name))

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """Return the directories and the files directly in path; a '/' separates them."""
        return async_to_sync(self._listdir)(path)

    async def _listdir(self, path: str) -> tuple[list[str], list[str]]:
        prefix = self.location + clean_directory(path)
        directories: list[str] = []
        files: list[str] = []
        after = ""
        while True:
            page = await self.store.list_folder(prefix, delimiter="/", after=after)
            for entry in page:
                if isinstance(entry, str):
                    directories.append(entry[len(prefix) : -1])
                else:
                    files.append(entry.key[len(prefix) :])
            if not page:
                return directories, files
            last = page[-1]
            after = last if isinstance(last, str) else last.key

    def size(self, name: str) -> int:
        """Return the size of the file called name, in bytes."""
        return self._stat(name).size

    def url(self, name: str | None) -> str:
        """Return a URL of the blobstore API that serves the file: signed, unless reads are open.

        The API serves the ``default`` alias, under the site's mount of
        ``blobstore.urls``. The signed URL grants GET (and HEAD) for
        ``url_expires`` seconds.
        """
        if name is None:
            raise ValueError("The name must be given to url().")
        if self.alias != "default":
            raise NotImplementedError(
                f"The blobstore API serves the 'default' alias only, not {self.alias!r}: "
                "files of other aliases have no URL."
            )
        key = self.key(name)
        if conf.BLOBSTORE_ANONYMOUS_ACCESS in ("read", "write"):
            return signing.blob_path(key)
        return signing.signed_url(key, method="GET", expires=self.url_expires)

    def get_accessed_time(self, name: str) -> datetime.datetime:
        """Return when the file was last changed: blobs do not record reads."""
        return self.get_modified_time(name)

    def get_created_time(self, name: str) -> datetime.datetime:
        """Return when the file was first stored under name (aware when USE_TZ is on)."""
        info = self._stat(name)
        return _as_setting_wants(info.created or info.updated)

    def get_modified_time(self, name: str) -> datetime.datetime:
        """Return when the file was last stored (aware when USE_TZ is on)."""
        return _as_setting_wants(self._stat(name).updated)

    def _stat(self, name: str) -> BlobInfo:
        info = async_to_sync(self.store.stat)(self.key(name))
        if info is None:
            raise FileNotFoundError(f"No file is called {name!r}.")
        return info

    # The async twins

    async def aopen(self, name: str) -> BlobStream:
        """Open the file called name as a stream of chunks; close it (``async with``) when done."""
        stream = await self.store.stream(self.key(name))
        if stream is None:
            raise FileNotFoundError(f"No file is called {name!r}.")
        return stream

    async def asave(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Save content as save() does; return the name it was saved under."""
        # Choosing a free name is Django's own code, which is synchronous.
        saved: str = await sync_to_async(self.save)(name, content, max_length)
        return saved

    async def aexists(self, name: str) -> bool:
        """Return whether a file, or a directory of files, is called name."""
        directory = clean_directory(name)
        if not directory:
            return True  # the top directory
        if not name.endswith(("/", "\\")) and await self.store.exists(self.key(name)):
            return True
        # Directories exist as in FileSystemStorage, which collectstatic --clear relies on.
        return bool(await self.store.list_blobs(self.location + directory, limit=1))

    async def adelete(self, name: str) -> None:
        """Delete the file called name; a name with no file is no error."""
        if not name:
            raise ValueError("The name must be given to adelete().")
        await self.store.evict(self.key(name))

    def write_file(self, name: str, content: File[Any]) -> None:
        """Store content under exactly name, replacing a file there (for copying whole sites)."""
        self._write(name, content, if_absent=False)


def clean_name(name: str) -> str:
    """Return name with '/' for every separator, or raise SuspiciousFileOperation if unsafe."""
    if not isinstance(name, str):
        raise TypeError(f"A file name must be a str, not {type(name).__name__}.")
    cleaned = name.replace("\\", "/")
    if pathlib.PureWindowsPath(name).drive:
        raise SuspiciousFileOperation(f"The file name {name!r} names a drive.")
    validate_file_name(cleaned, allow_relative_path=True)
    return cleaned


def clean_directory(path: str) -> str:
    """Return the key prefix of the directory path, '' for the top, or raise if unsafe."""
    directory = path.rstrip("/\\")  # Django's directory names may end in a separator
    return clean_name(directory) + "/" if directory else ""


def _chunks_of(content: File[Any]) -> AsyncIterator[BytesLike]:
    """Return the content's chunks; a file of one chunk is read at once, on this thread."""
    if not content.multiple_chunks(STREAM_CHUNK_SIZE):
        return once(b"".join(_as_bytes(chunk) for chunk in content.chunks(STREAM_CHUNK_SIZE)))
    return _chunks_read_here(content)


async def _chunks_read_here(content: File[Any]) -> AsyncIterator[bytes]:
    """Yield the content's chunks, each read on the thread that called save()."""
    chunks: Iterator[bytes | str] = iter(content.chunks(STREAM_CHUNK_SIZE))
    # The content may itself be a file whose reads use async_to_sync, or
    # belong to that thread's database connection.
    next_chunk = sync_to_async(_next_or_none, thread_sensitive=True)
    while (chunk := await next_chunk(chunks)) is not None:
        yield _as_bytes(chunk)


def _as_bytes(chunk: bytes | str) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else chunk


def _next_or_none(chunks: Iterator[bytes | str]) -> bytes | str | None:
    return next(chunks, None)


def _as_setting_wants(moment: datetime.datetime) -> datetime.datetime:
    return moment if settings.USE_TZ else timezone.make_naive(moment)


class BlobFile(File):  # type: ignore[type-arg]
    """A stored file, read lazily: each read fetches only the bytes it asks for.

    All its reads see the version of the blob that was there when it was
    opened; if that version is replaced or deleted meanwhile, a read raises
    ``OSError`` rather than mix two versions.
    """

    DEFAULT_CHUNK_SIZE = STREAM_CHUNK_SIZE

    def __init__(self, store: StreamingStorage, info: BlobInfo, name: str, mode: str) -> None:
        self.store = store
        self.info = info
        self.content_type = info.content_type
        super().__init__(_reader(store, info, mode), name)
        self.mode = mode

    @property
    def size(self) -> int:
        """Return the size of the blob, in bytes, with no read."""
        return self.info.size

    def open(self, mode: str | None = None, *args: Any, **kwargs: Any) -> BlobFile:
        """Rewind the file, or reopen it if it was closed."""
        if self.closed:
            self.mode = mode or self.mode
            self.file = _reader(self.store, self.info, self.mode)
        else:
            self.seek(0)
        return self


def _reader(store: StreamingStorage, info: BlobInfo, mode: str) -> IO[Any]:
    buffered = io.BufferedReader(BlobReader(store, info))
    return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding="utf-8")


class BlobReader(io.RawIOBase):
    """A seekable raw file over one version of a blob, which fetches byte ranges as read.

    A read fetches at least :data:`READ_BUFFER_SIZE` bytes, and twice as many
    as the last fetch while reads go on where the last one ended, up to
    :data:`READ_AHEAD_LIMIT`: a few bytes of a header cost one small range, a
    file read through cost few round trips, and memory stays bounded.
    """

    def __init__(self, store: StreamingStorage, info: BlobInfo) -> None:
        super().__init__()
        self.store = store
        self.info = info
        self.position = 0
        self.fetched = bytearray()
        self.fetched_at = 0
        self.window = READ_BUFFER_SIZE

    def readable(self) -> bool:
        """Return True: the file can be read."""
        return True

    def seekable(self) -> bool:
        """Return True: the file can seek."""
        return True

    def tell(self) -> int:
        """Return the position of the next read."""
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to offset from the start, the position or the end, and return the new position."""
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.info.size}
        position = origin[whence] + offset
        if position < 0:
            raise ValueError(f"Negative seek position {position}.")
        self.position = position
        return position

    def readinto(self, buffer: Any) -> int:
        """Read up to len(buffer) bytes into buffer; return how many."""
        view = memoryview(buffer).cast("B")
        if self.position >= self.info.size or not view:
            return 0
        offset = self.position - self.fetched_at
        if not 0 <= offset < len(self.fetched):
            self._fetch(len(view))
            offset = 0
        data = memoryview(self.fetched)[offset : offset + len(view)]
        view[: len(data)] = data
        self.position += len(data)
        return len(data)

    def readall(self) -> bytes:
        """Read the rest of the file."""
        rest = bytearray(max(self.info.size - self.position, 0))
        done = 0
        while done < len(rest) and (count := self.readinto(memoryview(rest)[done:])):
            done += count
        return bytes(rest[:done])

    def _fetch(self, wanted: int) -> None:
        sequential = self.fetched and self.position == self.fetched_at + len(self.fetched)
        self.window = min(self.window * 2, READ_AHEAD_LIMIT) if sequential else READ_BUFFER_SIZE
        stop = min(self.position + max(wanted, self.window), self.info.size)
        self.fetched = bytearray()  # free the last range before the next one arrives
        self.fetched = async_to_sync(self._range)(self.position, stop)
        self.fetched_at = self.position

    async def _range(self, start: int, stop: int) -> bytearray:
        stream = await self.store.stream(self.info.key, start=start, stop=stop)
        if stream is None or stream.info.sha256 != self.info.sha256:
            if stream is not None:
                await stream.aclose()
            raise OSError(f"The file {self.info.key!r} changed while it was being read.")
        # Filled in place: one copy of the range in memory, not a list and its join.
        data = bytearray(stream.length)
        offset = 0
        async with stream:
            async for chunk in stream:
                data[offset : offset + len(chunk)] = chunk
                offset += len(chunk)
        return data
