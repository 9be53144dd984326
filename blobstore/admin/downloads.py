"""What the blob admin serves besides pages: downloads, images and zip archives, streamed."""

from __future__ import annotations

import asyncio
import re
import zipfile
from collections.abc import AsyncIterator, Iterable

from django.core.files.uploadedfile import UploadedFile
from django.db import router
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header

from blobstore.admin.previews import image_type
from blobstore.api.responses import (
    SAFE_HEADERS,
    closing_chunks,
    download_name,
    keep_out_of_shared_caches,
)
from blobstore.models import Blob
from blobstore.storage import BlobInfo, BlobStream, ORMStorage, storages
from blobstore.storage.base import OCTET_STREAM, STREAM_CHUNK_SIZE

# An image opened on its own is still a document: it may show itself, nothing more.
_IMAGE_CSP = "default-src 'none'; img-src 'self'; sandbox"


def blob_storage(using: str | None) -> ORMStorage:
    """Return the configured ORMStorage on database using, or one with the default options.

    The admin edits Blob rows, so it goes through an ORMStorage on their
    database (None: the one new rows go to); taking the configured one
    applies its options, such as the size limit.
    """
    using = using or router.db_for_write(Blob)
    for alias in storages.backends:
        store = storages[alias]
        if isinstance(store, ORMStorage) and store.using == using:
            return store
    return ORMStorage(using=using)


async def read_head(store: ORMStorage, key: str, length: int) -> tuple[BlobInfo, bytes] | None:
    """Return the record and the first length bytes of the blob under key, or None."""
    stream = await store.stream(key, stop=length)
    if stream is None:
        return None
    async with stream:
        return stream.info, await stream.read()


async def open_image(store: ORMStorage, key: str) -> tuple[BlobStream, str] | None:
    """Open the blob under key with its MIME type if it is a PNG, JPEG, GIF or WebP image."""
    head = await read_head(store, key, 16)
    if head is None or (content_type := image_type(head[1])) is None:
        return None
    stream = await store.stream(key)
    if stream is None:
        return None
    if stream.info.sha256 != head[0].sha256:  # replaced between the two reads
        await stream.aclose()
        return None
    return stream, content_type


async def upload_chunks(upload: UploadedFile[bytes]) -> AsyncIterator[bytes]:
    """Yield an uploaded file in chunks, as the storage's write() takes them."""
    # The upload is in memory or a local temporary file: reads are quick.
    for chunk in upload.chunks(STREAM_CHUNK_SIZE):
        yield chunk


def download_response(stream: BlobStream) -> StreamingHttpResponse:
    """Return a response that streams the blob as an attachment named after its key."""
    response = _streamed(stream, OCTET_STREAM, SAFE_HEADERS["Content-Security-Policy"])
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=download_name(stream.info.key)
    )
    return response


def image_response(stream: BlobStream, content_type: str) -> StreamingHttpResponse:
    """Return a response that streams an image for an ``<img>`` in the admin."""
    response = _streamed(stream, content_type, _IMAGE_CSP)
    response["Content-Disposition"] = "inline"
    return response


def zip_response(store: ORMStorage, keys: list[str]) -> StreamingHttpResponse:
    """Return a response that streams a zip archive of the blobs under keys."""
    response = StreamingHttpResponse(zip_chunks(store, keys), content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename="blobs.zip"
    )
    _protect(response, SAFE_HEADERS["Content-Security-Policy"])
    return response


def zip_entry_names(keys: Iterable[str]) -> list[str]:
    """Return, for each key, a zip entry name that extracts as its own file on any system.

    Keys are not paths: "/" or "..", empty and "." segments, backslashes (a
    separator on Windows) and drive letters would let an archive write
    outside the folder it is extracted into; control characters and the
    characters Windows refuses would stop it; and two keys may differ only
    where names cannot (letter case, a trailing dot). Each name keeps the
    key's "/" structure, with such segments made safe, and a number where it
    would meet another name.
    """
    names: list[str] = []
    files: set[str] = set()
    folders: set[str] = set()
    for key in keys:
        segments = [_safe_segment(segment) for segment in key.replace("\\", "/").split("/")]
        original = list(segments)
        number = 1
        while (at := _clash(segments, files, folders)) is not None:
            number += 1
            segments[at] = _numbered(original[at], number)
        name = "/".join(segments)
        names.append(name)
        files.add(name.casefold())
        folders.update("/".join(segments[:end]).casefold() for end in range(1, len(segments)))
    return names


def _clash(segments: list[str], files: set[str], folders: set[str]) -> int | None:
    """Return the index of the segment that meets another entry's name, or None."""
    for end in range(1, len(segments)):
        if "/".join(segments[:end]).casefold() in files:
            return end - 1  # a folder of this name would be another entry's file
    name = "/".join(segments).casefold()
    return len(segments) - 1 if name in files or name in folders else None


def _numbered(segment: str, number: int) -> str:
    stem, dot, extension = segment.rpartition(".")
    return f"{stem} ({number}).{extension}" if dot and stem else f"{segment} ({number})"


_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))}
)


def _safe_segment(segment: str) -> str:
    # Windows drops trailing dots and spaces, which would make ".." of "... ".
    safe = _UNSAFE_IN_NAMES.sub("_", segment).rstrip(". ")
    if not safe:
        return "_"
    if safe.partition(".")[0].upper() in _WINDOWS_DEVICES:
        return f"_{safe}"
    return safe


async def zip_chunks(store: ORMStorage, keys: list[str]) -> AsyncIterator[bytes]:
    """Yield a zip archive of the blobs under keys, one bounded piece at a time."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, name in zip(keys, zip_entry_names(keys), strict=True):
            stream = await store.stream(key)
            if stream is None:  # evicted since it was selected
                continue
            async with stream:
                with archive.open(_zip_info(name, stream), "w") as entry:
                    async for chunk in stream:
                        # Deflating a chunk takes milliseconds: not on the event loop.
                        await asyncio.to_thread(entry.write, chunk)
                        if piece := sink.drain():
                            yield piece
            yield sink.drain()  # the end of the entry: deflate's last bytes, its sizes and CRC
    yield sink.drain()  # the central directory


def _zip_info(name: str, stream: BlobStream) -> zipfile.ZipInfo:
    updated = timezone.localtime(stream.info.updated)
    info = zipfile.ZipInfo(name, date_time=updated.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16  # a plain file, readable by all
    # zipfile picks ZIP64 headers from the announced size; it checks the real one.
    info.file_size = stream.length
    return info


class _Sink:
    """A write-only file that keeps what zipfile writes until it is drained."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        """Keep everything for drain(): there is nowhere to flush to."""

    def close(self) -> None:
        """Keep everything for drain(): the archive's end is drained last."""

    def drain(self) -> bytes:
        """Return and forget what was written since the last drain."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _streamed(stream: BlobStream, content_type: str, csp: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(closing_chunks(stream), content_type=content_type)
    response["Content-Length"] = str(stream.length)
    _protect(response, csp)
    return response


def _protect(response: StreamingHttpResponse, csp: str) -> None:
    for name, value in {**SAFE_HEADERS, "Content-Security-Policy": csp}.items():
        response[name] = value
    keep_out_of_shared_caches(response)  # the admin's pages are a staff user's own
