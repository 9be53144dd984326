"""``manage.py blobstore SUBCOMMAND``: blobstore's command-line tools.

``token`` and ``proxystore-config`` set up access, ``url`` prints a signed URL;
``put``, ``get``, ``ls``, ``rm``, ``cp`` and ``stats`` work on the storages of
``BLOBSTORE_STORAGES``; ``verify`` and ``purge`` look after them;
``import-media`` copies a Django file storage into a ``BlobFileStorage``.
Blobs move in chunks of 1 MiB, never whole, and a transfer that takes a while
shows a progress bar on standard error when that is a terminal. Ctrl-C cancels
the work, lets it clean up and exits with status 130 and one line; a second
Ctrl-C during that clean-up ends the process at once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import io
import json
import mimetypes
import os
import secrets
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import InvalidStorageError
from django.core.files.storage import Storage as DjangoStorage
from django.core.files.storage import storages as django_storages
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.db.models import Count, Sum

from blobstore import signing
from blobstore.contrib.proxystore import commands as proxystore
from blobstore.exceptions import ObjectSizeExceededError, size_limit_advice
from blobstore.files import BlobFileStorage
from blobstore.management.progress import Progress
from blobstore.models import APIToken
from blobstore.sizes import format_size
from blobstore.storage import (
    BaseStorage,
    BlobInfo,
    BlobStream,
    ListingStorage,
    ORMStorage,
    Storage,
    StreamingStorage,
    storages,
)
from blobstore.storage.base import (
    OCTET_STREAM,
    STREAM_CHUNK_SIZE,
    validate_content_type,
    validate_key,
)

CHUNK_SIZE = STREAM_CHUNK_SIZE
"""How much of a file is read at a time, in bytes (1 MiB)."""

PAGE_SIZE = 1000
"""How many records one listing call asks for."""

STDIO = "-"

MAX_AGE = 100 * 365 * 24 * 3600
"""The largest --older-than, in seconds (100 years)."""

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C, as shells report it (128 + SIGINT)."""


class Command(BaseCommand):
    help = (
        "blobstore's tools: API tokens, ProxyStore endpoint configuration, and blobs in "
        "the storages of BLOBSTORE_STORAGES (put, get, ls, rm, cp, stats, verify, purge), "
        "signed URLs (url) and moving a site's media into blobstore (import-media)."
    )
    # call_command("blobstore", "put", KEY, "-", stdin=a_binary_file) reads that instead.
    stealth_options = ("stdin",)

    progress_delay = 0.5
    """Seconds a transfer runs before its progress bar appears (on a terminal only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.standalone = False
        self.opened: dict[str, Storage] = {}

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        def add(name: str, summary: str, description: str = "") -> CommandParser:
            return subcommands.add_parser(name, help=summary, description=description or summary)

        def storage_option(subparser: CommandParser, default: str | None = "default") -> None:
            subparser.add_argument(
                "--storage",
                default=default,
                metavar="ALIAS",
                help="The alias of BLOBSTORE_STORAGES to use"
                + (f" (default: {default!r})." if default else " (default: every alias)."),
            )

        token = add("token", "Create an API token for a user and print it, once.")
        token.add_argument("username")
        token.add_argument("--name", default="", help="What the token is for.")

        proxystore.add_arguments(add(proxystore.NAME, proxystore.SUMMARY))

        put = add(
            "put",
            "Store a file, or standard input, as a blob.",
            "Store FILE (or standard input, for -) under KEY, streamed in 1 MiB chunks; a blob "
            "already there is replaced once the whole new one is in. Nothing is stored when the "
            "input is over the storage's max_object_size or cannot be read to the end.",
        )
        put.add_argument("key", metavar="KEY", help="The key to store the blob under.")
        put.add_argument("file", metavar="FILE", help="The file to store, or - for standard input.")
        put.add_argument(
            "--content-type",
            metavar="TYPE",
            help="The blob's media type (default: guessed from FILE's name, or from KEY's when "
            "reading standard input; else application/octet-stream).",
        )
        storage_option(put)

        get = add(
            "get",
            "Write a blob to a file, or to standard output.",
            "Write the blob stored under KEY to FILE (by default, or for -, to standard output), "
            "streamed in 1 MiB chunks and checked against its SHA-256. A FILE appears only "
            "when the whole blob is in it.",
        )
        get.add_argument("key", metavar="KEY", help="The key of the blob.")
        get.add_argument(
            "file", metavar="FILE", nargs="?", default=STDIO, help="Where to write (default: -)."
        )
        storage_option(get)

        ls = add(
            "ls",
            "List the keys of a storage.",
            "Print the keys of a storage in key order (by code point), one a line; with --long, "
            "each key's size in bytes, update time (UTC) and SHA-256 before it. With --delimiter, "
            "only the keys directly under the prefix, and each folder below it once.",
        )
        ls.add_argument("--prefix", default="", help="Only keys that start with PREFIX.")
        ls.add_argument(
            "--delimiter",
            help="Show the keys under the prefix as folders split by DELIMITER (such as /).",
        )
        ls.add_argument(
            "-l", "--long", action="store_true", help="Print size, updated time and SHA-256."
        )
        storage_option(ls)

        rm = add(
            "rm",
            "Remove blobs.",
            "Remove the blobs stored under the KEYs; keys with no blob are reported on standard "
            "error (that is no error, as for the protocol's evict).",
        )
        rm.add_argument("keys", metavar="KEY", nargs="+", help="The keys of the blobs.")
        storage_option(rm)

        cp = add(
            "cp",
            "Copy every blob from one storage to another.",
            "Copy every blob (or every blob under --prefix) of the storage --from to the storage "
            "--to, streamed, replacing blobs of the same key there. Nothing is copied when a "
            "blob is over the target's max_object_size.",
        )
        cp.add_argument(
            "--from", dest="source", required=True, metavar="ALIAS", help="The storage to read."
        )
        cp.add_argument(
            "--to", dest="target", required=True, metavar="ALIAS", help="The storage to write."
        )
        cp.add_argument("--prefix", default="", help="Only keys that start with PREFIX.")

        stats = add(
            "stats",
            "Count the blobs and bytes of each storage.",
            "For each storage alias: how many blobs, how many bytes, the largest blob and, for "
            "ORMStorage, how many chunk rows (and how many of them no blob names: uploads in "
            "progress, or left over).",
        )
        storage_option(stats, default=None)
        stats.add_argument("--json", action="store_true", help="Print the figures as JSON.")

        verify = add(
            "verify",
            "Read every blob and report the damaged ones.",
            "Read every blob of a storage to the end and check its size and SHA-256 against its "
            "record. Each damaged blob is reported on a line of its own (its key, then what is "
            "wrong), then a summary; the exit status is 1 if any blob is damaged.",
        )
        storage_option(verify)

        purge = add(
            "purge",
            "Delete expired blobs and the chunks of abandoned uploads.",
            "Delete the blobs whose expiry time has passed, and the chunk rows of uploads that "
            "stopped before they were stored (a process killed mid-upload leaves them; no blob "
            "names them), in bounded batches, each a transaction of its own: safe to run from "
            "cron while the site serves. Uploads still under way keep their chunks: only uploads "
            "idle for --older-than seconds go.",
        )
        storage_option(purge)
        purge.add_argument(
            "--older-than",
            type=_seconds,
            metavar="SECONDS",
            help="How long an upload must have been idle to count as abandoned "
            "(default: the storage's own, an hour for the built-in backends).",
        )

        url = add(
            "url",
            "Print a signed URL of a blob.",
            "Print a URL of the blobstore API that grants one method (GET, which allows HEAD "
            "too, or PUT) on KEY to whoever holds it, with no login, for --expires seconds. "
            "It is a path on this site unless --base-url gives the site's address.",
        )
        url.add_argument("key", metavar="KEY", help="The key of the blob.")
        url.add_argument(
            "--expires",
            type=int,
            default=signing.DEFAULT_EXPIRES,
            metavar="SECONDS",
            help=f"How long the URL works (default: {signing.DEFAULT_EXPIRES}).",
        )
        url.add_argument("--method", choices=signing.METHODS, default="GET")
        url.add_argument("--base-url", default="", help="The site's address, e.g. https://host")

        import_media = add(
            "import-media",
            "Copy every file of a Django storage into a BlobFileStorage.",
            "Copy every file of the Django storage --from (an alias of settings.STORAGES, e.g. "
            "the old 'default' kept under another name) into the BlobFileStorage --to (default: "
            "'default'), under the same names, streamed in 1 MiB chunks; files already there "
            "are replaced. Run it after pointing STORAGES at blobstore.",
        )
        import_media.add_argument(
            "--from", dest="source", required=True, metavar="ALIAS", help="The storage to read."
        )
        import_media.add_argument(
            "--to",
            dest="target",
            default="default",
            metavar="ALIAS",
            help="The BlobFileStorage to write (default: 'default').",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # Run as a program, the command closes the storages it opened (an open
        # SQLite connection would keep the process alive); called from code,
        # it leaves the shared instances of `storages` to their owner.
        self.standalone = True
        super().run_from_argv(argv)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if subcommand == "token":
            self.create_token(options["username"], options["name"])
        elif subcommand == proxystore.NAME:
            self.stdout.write(proxystore.handle(options))
        elif subcommand == "url":
            self.print_url(
                options["key"], options["method"], options["expires"], options["base_url"]
            )
        elif subcommand == "import-media":
            self.import_media(options["source"], options["target"], options["verbosity"])
        else:
            work: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
                "put": self.put,
                "get": self.get,
                "ls": self.list_keys,
                "rm": self.remove,
                "cp": self.copy,
                "stats": self.stats,
                "verify": self.verify,
                "purge": self.purge,
            }
            self.run(work[subcommand](options))

    # token and proxystore-config

    def create_token(self, username: str, name: str) -> None:
        users = get_user_model()._default_manager
        try:
            user = users.get_by_natural_key(username)
        except users.model.DoesNotExist:
            raise CommandError(f"No user is called {username!r}.") from None
        _, secret = APIToken.objects.create_token(user, name)
        self.stderr.write(f"A token for {username!r}; it is shown once, only its digest is stored:")
        self.stdout.write(secret)

    # url and import-media

    def print_url(self, key: str, method: str, expires: int, base_url: str) -> None:
        try:
            url = signing.signed_url(_checked_key(key), method=method, expires=expires)
        except (ImproperlyConfigured, ValueError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(base_url.rstrip("/") + url)

    def import_media(self, source_alias: str, target_alias: str, verbosity: int) -> None:
        source, target = _file_storage(source_alias), _file_storage(target_alias)
        if not isinstance(target, BlobFileStorage):
            raise CommandError(
                f"STORAGES[{target_alias!r}] is a {type(target).__name__}, not a BlobFileStorage."
            )
        names = list(_walk(source, ""))
        total = sum(source.size(name) for name in names)
        with self.progress(total, f"import-media 0/{len(names)}") as progress:
            for number, name in enumerate(names, 1):
                progress.label = f"import-media {number}/{len(names)}"
                with source.open(name, "rb") as content:
                    try:
                        target.write_file(name, _CountedFile(content, progress))
                    except ObjectSizeExceededError as error:
                        # The message names the setting of the target's alias.
                        raise CommandError(
                            f"The file {name!r} was not imported: {error} {number - 1} "
                            f"file{'s' if number != 2 else ''} had been imported."
                        ) from None
        if verbosity >= 1:
            self.stdout.write(
                f"Imported {len(names)} file{'s' if len(names) != 1 else ''}, "
                f"{format_size(total, exact=True)}, from {source_alias!r} to {target_alias!r}."
            )

    # The storage subcommands

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work to the end, then close the storages it opened when run as a program."""

        async def closing() -> None:
            try:
                await work
            finally:
                if self.standalone:
                    for store in self.opened.values():
                        await store.close()
                self.opened.clear()

        try:
            if self.standalone:
                # In the main thread, so that Ctrl-C cancels the transfer
                # (an upload cut off stores nothing).
                job = closing()
                try:
                    interrupted = asyncio.run(_interruptible(job))
                finally:
                    # A Ctrl-C before the work began left these unstarted: closed, they
                    # are not reported as never awaited. Closing a finished one does nothing.
                    job.close()
                    work.close()
                if interrupted:
                    # The clean-up is over and every thread has finished: the process
                    # only says so and exits, which another Ctrl-C would cut short.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    raise KeyboardInterrupt
            else:
                # On the caller's thread and database connections.
                async_to_sync(closing)()
        except (ImproperlyConfigured, ValueError) as error:
            raise CommandError(str(error)) from error
        except KeyboardInterrupt:
            # The work was cancelled and cleaned up: a message, no traceback.
            raise CommandError("Interrupted.", returncode=INTERRUPTED) from None

    async def put(self, options: dict[str, Any]) -> None:
        key = _checked_key(options["key"])
        store = self.streaming_storage(options["storage"])
        name = options["file"]
        named = key if name == STDIO else name
        content_type = _checked_content_type(options["content_type"], named)
        limit = getattr(store, "max_object_size", None)
        source = self.open_input(name, options)
        try:
            size = _regular_size(source)
            if size is not None and limit is not None and size > limit:
                raise CommandError(
                    f"{_describe_input(name)} has {format_size(size)}, more than the limit of "
                    f"the storage {options['storage']!r} ({format_size(limit)}); nothing was "
                    f"stored. {size_limit_advice(options['storage'])}"
                )
            with self.progress(size, f"put {key}") as progress:
                try:
                    info = await store.write(
                        key, _read_chunks(source, progress), content_type=content_type
                    )
                except ObjectSizeExceededError as error:
                    raise CommandError(
                        f"{_describe_input(name)} is larger than the limit of the storage "
                        f"{options['storage']!r} ({format_size(error.max_object_size)}); "
                        f"nothing was stored. {size_limit_advice(options['storage'])}"
                    ) from None
                except OSError as error:
                    raise CommandError(
                        f"Could not read {_describe_input(name)}: {error}; nothing was stored."
                    ) from None
        finally:
            if name != STDIO:
                source.close()
        assert info is not None  # an unconditional write always stores
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Stored {key!r}: {format_size(info.size, exact=True)}, {info.content_type}, "
                f"SHA-256 {info.sha256}."
            )

    async def get(self, options: dict[str, Any]) -> None:
        key = _checked_key(options["key"])
        alias = options["storage"]
        store = self.streaming_storage(alias)
        if options["file"] == STDIO:
            await self.write_to_stdout(store, alias, key)
            return
        size = await self.write_to_file(store, alias, key, Path(options["file"]))
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Wrote {key!r} to {options['file']}: {format_size(size, exact=True)}."
            )

    async def open_stream(self, store: StreamingStorage, alias: str, key: str) -> BlobStream:
        """Open the blob under key, or raise CommandError."""
        # Iterate the stream at once: the storage holds a connection for it.
        stream = await _open(store, alias, key)
        if stream is None:
            raise CommandError(f"No blob is stored under {key!r} in the storage {alias!r}.")
        return stream

    async def write_to_stdout(self, store: StreamingStorage, alias: str, key: str) -> None:
        # Bytes go to the binary stream under the text one, never through it.
        self.stdout.flush()
        output = getattr(self.stdout, "buffer", None) or sys.stdout.buffer
        try:
            async with await self.open_stream(store, alias, key) as stream:
                await self.transfer(stream, alias, key, output.write)
            output.flush()
        except BrokenPipeError:
            # The reader went away, as in `... | head -c 10`: stop quietly, as cat does.
            if output is not sys.stdout.buffer:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None

    async def write_to_file(self, store: StreamingStorage, alias: str, key: str, path: Path) -> int:
        """Write the blob under key to path; return its size."""
        if await asyncio.to_thread(path.is_dir):
            raise CommandError(f"{path} is a directory; name a file to write the blob to.")
        # Written beside the file, then renamed over it: FILE never holds half a blob,
        # and is left as it was when anything fails.
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            output = await asyncio.to_thread(_create, partial)
        except OSError as error:
            raise CommandError(f"Could not write {path}: {error.strerror}.") from None
        try:
            with output:
                async with await self.open_stream(store, alias, key) as stream:
                    await self.transfer(stream, alias, key, output.write)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException as error:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            if isinstance(error, OSError):
                raise CommandError(f"Could not write {path}: {error}.") from None
            raise
        return stream.info.size

    async def transfer(
        self, stream: BlobStream, alias: str, key: str, write: Callable[[bytes], Any]
    ) -> None:
        """Write every chunk of stream, with a progress bar, and check its SHA-256."""
        digest = hashlib.sha256()
        whole = stream.start == 0 and stream.stop == stream.info.size
        with self.progress(stream.length, f"get {key}") as progress:
            try:
                async for chunk in stream:
                    await asyncio.to_thread(write, chunk)
                    if whole:
                        digest.update(chunk)
                    progress.advance(len(chunk))
            except RuntimeError as error:
                raise _damaged(alias, key, error) from None
        if whole and digest.hexdigest() != stream.info.sha256:
            raise CommandError(
                f"The bytes read for {key!r} do not match its SHA-256 ({stream.info.sha256})."
            )

    async def list_keys(self, options: dict[str, Any]) -> None:
        store = self.listing_storage(options["storage"])
        prefix, delimiter = options["prefix"], options["delimiter"]
        try:
            entries = (
                _every_blob(store, prefix)
                if delimiter is None
                else _every_entry(store, prefix, delimiter)
            )
            async for entry in entries:
                self.stdout.write(_listed(entry, long=options["long"]))
        except ValueError as invalid:
            raise CommandError(str(invalid)) from invalid

    async def remove(self, options: dict[str, Any]) -> None:
        keys = [_checked_key(key) for key in options["keys"]]  # all checked before any goes
        alias = options["storage"]
        store = self.storage(alias)
        removed = 0
        for key in dict.fromkeys(keys):
            if await store.exists(key):
                await store.evict(key)
                removed += 1
            else:
                self.stderr.write(f"No blob is stored under {key!r} in the storage {alias!r}.")
        if options["verbosity"] >= 1:
            self.stdout.write(f"Removed {removed} blob{'s' if removed != 1 else ''}.")

    async def copy(self, options: dict[str, Any]) -> None:
        names = options["source"], options["target"]
        if names[0] == names[1]:
            raise CommandError(f"--from and --to both name the storage {names[0]!r}.")
        source = self.streaming_storage(names[0])
        target = self.streaming_storage(names[1])
        prefix = options["prefix"]
        # A first pass over the records (not the bytes) finds the total, and
        # any blob the target would refuse before anything is copied.
        limit = getattr(target, "max_object_size", None)
        count = total = 0
        async for info in _every_blob(source, prefix):
            if limit is not None and info.size > limit:
                raise CommandError(
                    f"The blob {info.key!r} has {format_size(info.size)}, more than the limit of "
                    f"the storage {names[1]!r} ({format_size(limit)}); nothing was copied. "
                    f"{size_limit_advice(names[1])}"
                )
            count += 1
            total += info.size
        copied = copied_bytes = 0
        with self.progress(total, f"cp 0/{count}") as progress:
            async for info in _every_blob(source, prefix):
                stream = await _open(source, names[0], info.key)
                if stream is None:
                    continue  # evicted since it was listed
                progress.label = f"cp {copied + 1}/{count}"
                async with stream:
                    try:
                        written = await target.write(info.key, _counted(stream, names[0], progress))
                    except ObjectSizeExceededError as error:
                        raise CommandError(
                            f"The blob {info.key!r} grew over the limit of the storage "
                            f"{names[1]!r} ({format_size(error.max_object_size)}) while being "
                            f"copied; {copied} blob{'s' if copied != 1 else ''} had been "
                            f"copied. {size_limit_advice(names[1])}"
                        ) from None
                assert written is not None  # an unconditional write always stores
                if written.sha256 != stream.info.sha256:
                    raise CommandError(f"The copy of {info.key!r} does not match its SHA-256.")
                copied += 1
                copied_bytes += written.size
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Copied {copied} blob{'s' if copied != 1 else ''}, "
                f"{format_size(copied_bytes, exact=True)}, from {names[0]!r} to {names[1]!r}."
            )

    async def stats(self, options: dict[str, Any]) -> None:
        aliases = [options["storage"]] if options["storage"] else list(storages.backends)
        figures = {alias: await self.figures(alias) for alias in aliases}
        if options["json"]:
            self.stdout.write(json.dumps(figures, indent=2))
            return
        for alias, found in figures.items():
            where = (
                f" on the database {found['database']!r} ({found['vendor']})"
                if "database" in found
                else ""
            )
            self.stdout.write(f"{alias}: {found['backend']}{where}")
            self.stdout.write(f"  blobs       {found['blobs']:,}")
            self.stdout.write(f"  bytes       {found['bytes']:,} ({format_size(found['bytes'])})")
            largest = found["largest"]
            if largest is None:
                self.stdout.write("  largest     -")
            else:
                self.stdout.write(
                    f"  largest     {format_size(largest['size'], exact=True)}, {largest['key']!r}"
                )
            if "chunk_rows" in found:
                self.stdout.write(
                    f"  chunk rows  {found['chunk_rows']:,} "
                    f"({found['unreferenced_chunk_rows']:,} named by no blob)"
                )

    async def verify(self, options: dict[str, Any]) -> None:
        alias = options["storage"]
        store = self.streaming_storage(alias)
        # A first pass over the records (not the bytes) gives the progress bar its total.
        total = 0
        async for info in _every_blob(store, ""):
            total += info.size
        count = size = damaged = 0
        with self.progress(total, f"verify {alias}") as progress:
            async for info in _every_blob(store, ""):
                found = await _check(store, info.key, progress)
                if found is None:
                    continue  # evicted since it was listed
                read, problem = found
                count += 1
                size += read
                if problem:
                    damaged += 1
                    self.stdout.write(f"{info.key!r}: {problem}")
        if options["verbosity"] >= 1 or damaged:
            self.stdout.write(
                f"Verified {count:,} blob{'s' if count != 1 else ''}, "
                f"{format_size(size, exact=True)}, in the storage {alias!r}: {damaged:,} damaged."
            )
        if damaged:
            raise CommandError(
                f"{damaged:,} blob{'s are' if damaged != 1 else ' is'} damaged in the storage "
                f"{alias!r}."
            )

    async def purge(self, options: dict[str, Any]) -> None:
        alias = options["storage"]
        store = self.storage(alias)
        if not isinstance(store, BaseStorage):
            raise CommandError(
                f"The storage {alias!r} ({type(store).__name__}) cannot purge: it is not a "
                "blobstore backend."
            )
        seconds = options["older_than"]
        if seconds is None:
            deleted = await store.purge()
        else:
            deleted = await store.purge(older_than=datetime.timedelta(seconds=seconds))
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Deleted {deleted:,} row{'s' if deleted != 1 else ''} (expired blobs and chunks "
                f"of abandoned uploads) from the storage {alias!r}."
            )

    async def figures(self, alias: str) -> dict[str, Any]:
        """Return the counts of one storage."""
        store = self.listing_storage(alias)
        found: dict[str, Any] = {"backend": type(store).__name__}
        if isinstance(store, ORMStorage):
            # The database counts; no record crosses over.
            totals = await store.blobs.aaggregate(count=Count("pk"), total=Sum("size"))
            largest = await store.blobs.order_by("-size", "key").values_list("key", "size").afirst()
            referenced = store.blobs.exclude(version=None).values("version")
            found.update(
                database=store.using,
                vendor=connections[store.using].vendor,
                blobs=totals["count"],
                bytes=totals["total"] or 0,
                largest=None if largest is None else {"key": largest[0], "size": largest[1]},
                chunk_rows=await store.chunks.acount(),
                unreferenced_chunk_rows=await store.chunks.exclude(version__in=referenced).acount(),
            )
            return found
        count = total = 0
        biggest: BlobInfo | None = None
        async for info in _every_blob(store, ""):
            count += 1
            total += info.size
            if biggest is None or info.size > biggest.size:
                biggest = info
        found.update(
            blobs=count,
            bytes=total,
            largest=None if biggest is None else {"key": biggest.key, "size": biggest.size},
        )
        return found

    # Helpers

    def storage(self, alias: str) -> Storage:
        """Return the storage configured for alias."""
        try:
            known = alias in storages.backends
            if not known:
                raise CommandError(
                    f"No storage is called {alias!r}; BLOBSTORE_STORAGES has "
                    f"{', '.join(map(repr, storages.backends))}."
                )
            store = storages[alias]
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        self.opened[alias] = store
        return store

    def streaming_storage(self, alias: str) -> StreamingStorage:
        """Return the storage configured for alias, if it can stream blobs."""
        store = self.storage(alias)
        if not isinstance(store, StreamingStorage):
            raise _unable(alias, store, StreamingStorage)
        return store

    def listing_storage(self, alias: str) -> ListingStorage:
        """Return the storage configured for alias, if it can list its keys."""
        store = self.storage(alias)
        if not isinstance(store, ListingStorage):
            raise _unable(alias, store, ListingStorage)
        return store

    def stdin(self, options: dict[str, Any]) -> BinaryIO:
        given = options.get("stdin")
        return cast(BinaryIO, given) if given is not None else sys.stdin.buffer

    def open_input(self, name: str, options: dict[str, Any]) -> BinaryIO:
        if name == STDIO:
            return self.stdin(options)
        try:
            return open(name, "rb")  # closed by the caller
        except OSError as error:
            raise CommandError(f"Could not read {name}: {error.strerror}.") from None

    def progress(self, total: int | None, label: str) -> Progress:
        """Return a progress bar on standard error (drawn only on a terminal)."""
        stream = cast(TextIO, getattr(self.stderr, "_out", self.stderr))
        return Progress(stream, total, label, delay=self.progress_delay)


def _file_storage(alias: str) -> DjangoStorage:
    try:
        return django_storages[alias]
    except InvalidStorageError:
        raise CommandError(
            f"No file storage is called {alias!r}; STORAGES has "
            f"{', '.join(map(repr, django_storages.backends))}."
        ) from None


def _walk(storage: DjangoStorage, directory: str) -> Iterator[str]:
    """Yield the name of every file under directory, in the storage's order."""
    directories, files = storage.listdir(directory)
    base = f"{directory}/" if directory else ""
    for name in files:
        yield base + name
    for name in directories:
        yield from _walk(storage, base + name)


class _CountedFile(File):  # type: ignore[type-arg]
    """A file whose chunks advance a progress bar as they are read."""

    def __init__(self, file: File[bytes], progress: Progress) -> None:
        super().__init__(None, file.name)
        self.source = file
        self.progress = progress

    @property
    def size(self) -> int:
        """Return the size of the file being read."""
        return self.source.size

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        for chunk in self.source.chunks(chunk_size):
            self.progress.advance(len(chunk))
            yield chunk


async def _interruptible(work: Coroutine[Any, Any, None]) -> bool:
    """Await work, which the first Ctrl-C cancels; return whether Ctrl-C did.

    A second Ctrl-C, during the clean-up of the first, ends the process at
    once, as a kill would: the storages are safe from that, while asyncio.run's
    own handler would raise KeyboardInterrupt in the middle of the clean-up and
    run the rest of it on a state it does not expect.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if interrupted:
            _stop_at_once()
        interrupted = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except NotImplementedError:  # no signal handlers in this event loop: asyncio.run's own
        await work
        return False
    try:
        await work
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return True
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if interrupted:
            # Until the process has ended: threads may still be finishing their work.
            signal.signal(signal.SIGINT, _stop_at_once)
    return False


def _stop_at_once(*_: object) -> None:
    """End the process now, as a kill would: Ctrl-C came again during the clean-up of the first."""
    sys.stderr.write("Interrupted twice: stopped at once.\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED)


async def _every_blob(store: ListingStorage, prefix: str) -> AsyncIterator[BlobInfo]:
    """Yield the record of every blob whose key starts with prefix, in key order, page by page."""
    after = ""
    while True:
        page = await store.list_blobs(prefix, after=after, limit=PAGE_SIZE)
        for info in page:
            yield info
        if len(page) < PAGE_SIZE:
            return
        after = page[-1].key


async def _every_entry(
    store: ListingStorage, prefix: str, delimiter: str
) -> AsyncIterator[BlobInfo | str]:
    """Yield the blobs directly under prefix and its folders, in key order, page by page."""
    after = ""
    while True:
        page = await store.list_folder(prefix, delimiter=delimiter, after=after, limit=PAGE_SIZE)
        for entry in page:
            yield entry
        if len(page) < PAGE_SIZE:
            return
        last = page[-1]
        after = last if isinstance(last, str) else last.key


def _listed(entry: BlobInfo | str, *, long: bool) -> str:
    if isinstance(entry, str):
        return f"{'PRE':>102}  {entry}" if long else entry
    if long:
        return f"{entry.size:>14}  {_timestamp(entry.updated)}  {entry.sha256}  {entry.key}"
    return entry.key


async def _check(store: StreamingStorage, key: str, progress: Progress) -> tuple[int, str] | None:
    """Read the blob under key to the end; return the bytes read and what is wrong, or None.

    None means there is no blob under key any more; an empty problem, that it is whole.
    """
    try:
        stream = await store.stream(key)
    except (RuntimeError, ValueError) as error:
        return 0, f"cannot be opened: {error}"
    if stream is None:
        return None
    digest = hashlib.sha256()
    read = 0
    try:
        async with stream:
            async for chunk in stream:
                digest.update(chunk)
                read += len(chunk)
                progress.advance(len(chunk))
    except RuntimeError as error:
        return read, f"cannot be read to the end: {error}"
    # The record the stream opened, not the listing's: the blob may have been replaced since.
    expected = stream.info
    if read != expected.size:
        return read, f"wrong size: {read:,} bytes read, {expected.size:,} recorded"
    if digest.hexdigest() != expected.sha256:
        return read, f"wrong SHA-256: {digest.hexdigest()} read, {expected.sha256} recorded"
    return read, ""


async def _read_chunks(source: BinaryIO, progress: Progress) -> AsyncIterator[bytes]:
    """Yield the rest of source in chunks of CHUNK_SIZE bytes."""
    while chunk := await asyncio.to_thread(source.read, CHUNK_SIZE):
        progress.advance(len(chunk))
        yield chunk


async def _open(store: StreamingStorage, alias: str, key: str) -> BlobStream | None:
    """Open the blob under key as a stream, or return None; raise CommandError if it is damaged."""
    try:
        return await store.stream(key)
    except RuntimeError as error:
        raise _damaged(alias, key, error) from None


async def _counted(stream: BlobStream, alias: str, progress: Progress) -> AsyncIterator[bytes]:
    """Yield the chunks of stream, counted by progress; raise CommandError if it is damaged."""
    try:
        async for chunk in stream:
            progress.advance(len(chunk))
            yield chunk
    except RuntimeError as error:
        raise _damaged(alias, stream.info.key, error) from None


def _create(path: Path) -> BinaryIO:
    """Open a new file at path for writing (made with the umask's permissions, like any)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return open(descriptor, "wb")


def _unable(alias: str, store: Storage, kind: type[Any]) -> CommandError:
    return CommandError(
        f"The storage {alias!r} ({type(store).__name__}) cannot do this: it does not keep the "
        f"{kind.__name__} protocol of blobstore.storage."
    )


def _damaged(alias: str, key: str, error: RuntimeError) -> CommandError:
    return CommandError(
        f"The blob {key!r} of the storage {alias!r} cannot be read: {error} "
        "(manage.py blobstore verify lists every damaged blob)."
    )


def _checked_content_type(given: str | None, name: str) -> str:
    """Return the media type given, or the one guessed from name; raise CommandError if invalid."""
    if given is None:
        return mimetypes.guess_type(name)[0] or OCTET_STREAM
    try:
        return validate_content_type(given)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _checked_key(key: str) -> str:
    try:
        return validate_key(key)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _regular_size(source: BinaryIO) -> int | None:
    """Return the size of source if it is a regular file (its bytes left to read), else None."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    try:
        return max(status.st_size - source.tell(), 0)
    except OSError:
        return status.st_size


def _describe_input(name: str) -> str:
    return "Standard input" if name == STDIO else name


def _seconds(text: str) -> float:
    """Return text as a number of seconds from 0 to MAX_AGE, or raise ArgumentTypeError."""
    refusal = argparse.ArgumentTypeError(
        f"{text[:40]!r} is not a number of seconds from 0 to {MAX_AGE:,}"
    )
    # Bounded before conversion, as every number from outside.
    if len(text) > 32:
        raise refusal
    try:
        seconds = float(text)
    except ValueError:
        raise refusal from None
    if not 0 <= seconds <= MAX_AGE:  # also refuses nan
        raise refusal
    return seconds


def _timestamp(moment: datetime.datetime) -> str:
    if moment.tzinfo is None:
        return moment.isoformat(timespec="seconds")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
