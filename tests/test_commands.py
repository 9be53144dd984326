"""``manage.py blobstore put/get/ls/rm/cp/stats/verify/purge``: in-process, and as programs."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.db.models import QuerySet
from django.test import SimpleTestCase, TransactionTestCase, override_settings
from django.utils import timezone

from blobstore.management.commands import blobstore as command_module
from blobstore.management.commands.blobstore import Command
from blobstore.management.progress import MIB, Progress
from blobstore.models import Blob, BlobChunk
from blobstore.storage import ListingStorage, ORMStorage, storages
from blobstore.storage.base import once
from blobstore.storage.chunked import CHUNK_SIZE

ROOT = Path(__file__).resolve().parent.parent
ORM = "blobstore.storage.ORMStorage"
DICT = "blobstore.storage.DictStorage"
SQLITE = "blobstore.storage.SQLiteStorage"

# Over a few chunks, and not a whole number of them.
DATA = os.urandom(5 * MIB + 123)
DIGEST = hashlib.sha256(DATA).hexdigest()
LIMIT = 64 * 1024
"""The max_object_size of the "small" storage."""
CHUNKS = len(DATA) // CHUNK_SIZE
"""How many chunk rows DATA takes after its head: numbered 1 to CHUNKS, the last one short."""
LONG_AGO = datetime.timedelta(hours=2)
"""Older than the default --older-than of purge (an hour)."""

# The mixins are test cases to the type checker, plain classes to unittest.
if TYPE_CHECKING:
    TestCaseMixin = TransactionTestCase
else:
    TestCaseMixin = object


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def blobstore(*arguments: str, stdin: io.BytesIO | None = None) -> tuple[str, str]:
    """Run the command in this process; return what it wrote to stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    extra = {} if stdin is None else {"stdin": stdin}
    call_command("blobstore", *arguments, stdout=stdout, stderr=stderr, **extra)
    return stdout.getvalue(), stderr.getvalue()


def get_bytes(key: str, *options: str) -> bytes:
    """Run `blobstore get KEY - ...` in this process; return the bytes it wrote to stdout."""
    stdout = io.TextIOWrapper(io.BytesIO())
    call_command("blobstore", "get", key, "-", *options, stdout=stdout, stderr=io.StringIO())
    buffer = stdout.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue()


def verify(*arguments: str) -> tuple[int, str]:
    """Run `blobstore verify ...` in this process; return its exit status and standard output."""
    stdout = io.StringIO()
    try:
        call_command("blobstore", "verify", *arguments, stdout=stdout, stderr=io.StringIO())
    except CommandError as error:
        return error.returncode, stdout.getvalue()
    return 0, stdout.getvalue()


def records(alias: str) -> list[tuple[str, int, str]]:
    """Return the key, size and digest of every blob of a storage."""
    store = storages[alias]
    assert isinstance(store, ListingStorage)
    infos = async_to_sync(store.list_blobs)(limit=10_000)
    return [(info.key, info.size, info.sha256) for info in infos]


class CommandTestCase(TransactionTestCase):
    """ORMStorage on the default database, two DictStorages and a SQLite file."""

    databases = {"default"}

    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.directory = Path(directory.name)
        setting = override_settings(
            BLOBSTORE_STORAGES={
                "default": {"BACKEND": ORM, "OPTIONS": {"max_object_size": None}},
                "other": {"BACKEND": DICT},
                "small": {"BACKEND": DICT, "OPTIONS": {"max_object_size": LIMIT}},
                "file": {
                    "BACKEND": SQLITE,
                    "OPTIONS": {"database_path": str(self.directory / "blobs.sqlite3")},
                },
            }
        )
        setting.enable()
        self.addCleanup(setting.disable)
        # Before the setting goes: an open SQLite connection keeps a thread alive.
        self.addCleanup(lambda: async_to_sync(storages["file"].close)())
        self.source = self.directory / "source.bin"
        self.source.write_bytes(DATA)

    def snapshot(self) -> dict[str, Any]:
        """Return what every storage holds, and the ORM's chunk rows."""
        found: dict[str, Any] = {
            alias: records(alias) for alias in storages.backends if alias != "file"
        }
        found["chunk rows"] = BlobChunk.objects.count()
        found["files"] = sorted(path.name for path in self.directory.iterdir())
        return found

    def assert_refused(self, message: str, *arguments: str, **options: Any) -> None:
        """Assert that the command raises a CommandError holding message, changing nothing."""
        before = self.snapshot()
        with self.assertRaisesMessage(CommandError, message):
            blobstore(*arguments, **options)
        self.assertEqual(self.snapshot(), before)


class PutGetTests(CommandTestCase):
    def test_file_round_trip_is_byte_exact(self) -> None:
        out, err = blobstore("put", "data/one", str(self.source))
        self.assertEqual(
            out,
            f"Stored 'data/one': 5 MiB ({len(DATA):,} bytes), application/octet-stream, "
            f"SHA-256 {DIGEST}.\n",
        )
        self.assertEqual(err, "")
        self.assertEqual(records("default"), [("data/one", len(DATA), DIGEST)])
        # Stored in chunk rows, not whole.
        self.assertEqual(BlobChunk.objects.count(), len(DATA) // CHUNK_SIZE)
        target = self.directory / "copy.bin"
        out, _ = blobstore("get", "data/one", str(target))
        self.assertEqual(target.read_bytes(), DATA)
        self.assertEqual(out, f"Wrote 'data/one' to {target}: 5 MiB ({len(DATA):,} bytes).\n")

    def test_content_type_is_guessed_or_given(self) -> None:
        page = self.directory / "page.html"
        page.write_bytes(b"<p>hi</p>")
        blobstore("put", "a/page", str(page))
        blobstore("put", "b/report.pdf", "-", stdin=io.BytesIO(b"%PDF-"))
        blobstore("put", "c/data", str(page), "--content-type", "text/plain; charset=utf-8")
        stat = async_to_sync(storages["default"].stat)  # type: ignore[attr-defined]
        self.assertEqual(
            [stat(key).content_type for key in ["a/page", "b/report.pdf", "c/data"]],
            ["text/html", "application/pdf", "text/plain; charset=utf-8"],
        )
        self.assert_refused("content_type must be a media type", "put", "d", str(page),
                            "--content-type", "not a type")  # fmt: skip

    def test_stdin_and_stdout_round_trip_is_byte_exact(self) -> None:
        out, _ = blobstore("put", "piped", "-", stdin=io.BytesIO(DATA))
        self.assertIn(DIGEST, out)
        self.assertEqual(get_bytes("piped"), DATA)

    def test_get_writes_stdout_by_default(self) -> None:
        blobstore("put", "k", "-", stdin=io.BytesIO(b"small\x00\xff\r\n"))
        stdout = io.TextIOWrapper(io.BytesIO())
        call_command("blobstore", "get", "k", stdout=stdout)
        assert isinstance(stdout.buffer, io.BytesIO)
        self.assertEqual(stdout.buffer.getvalue(), b"small\x00\xff\r\n")

    def test_empty_blob_round_trips(self) -> None:
        empty = self.directory / "empty"
        empty.write_bytes(b"")
        blobstore("put", "empty", str(empty))
        self.assertEqual(get_bytes("empty"), b"")
        target = self.directory / "empty-copy"
        blobstore("get", "empty", str(target))
        self.assertEqual(target.read_bytes(), b"")

    def test_put_replaces_and_get_overwrites_a_file(self) -> None:
        blobstore("put", "k", str(self.source))
        blobstore("put", "k", "-", stdin=io.BytesIO(b"new"))
        self.assertEqual(BlobChunk.objects.count(), 0)  # the old version's chunks went
        target = self.directory / "out"
        target.write_bytes(b"old contents")
        blobstore("get", "k", str(target))
        self.assertEqual(target.read_bytes(), b"new")
        # No partial file is left beside it.
        self.assertEqual(sorted(p.name for p in self.directory.iterdir()), ["out", "source.bin"])

    def test_other_storages(self) -> None:
        for alias in ("other", "file"):
            blobstore("put", "k", str(self.source), "--storage", alias)
            self.assertEqual(get_bytes("k", "--storage", alias), DATA)
        self.assertEqual(records("default"), [])

    def test_verbosity_zero_is_silent(self) -> None:
        target = self.directory / "out"
        # Django's own options go before the subcommand.
        self.assertEqual(blobstore("-v", "0", "put", "k", str(self.source)), ("", ""))
        self.assertEqual(blobstore("-v", "0", "get", "k", str(target)), ("", ""))
        self.assertEqual(target.read_bytes(), DATA)


class BadInputTests(CommandTestCase):
    def setUp(self) -> None:
        super().setUp()
        blobstore("put", "kept", str(self.source))
        blobstore("put", "kept", "-", "--storage", "small", stdin=io.BytesIO(b"small one"))

    def test_get_of_an_unknown_key(self) -> None:
        message = "No blob is stored under 'nope' in the storage 'default'"
        self.assert_refused(message, "get", "nope")
        target = self.directory / "never"
        self.assert_refused("No blob is stored under 'nope'", "get", "nope", str(target))
        self.assertFalse(target.exists())

    def test_get_of_an_unknown_key_leaves_the_file(self) -> None:
        target = self.directory / "existing"
        target.write_bytes(b"mine")
        self.assert_refused("No blob", "get", "nope", str(target))
        self.assertEqual(target.read_bytes(), b"mine")

    def test_get_into_a_missing_directory_or_a_directory(self) -> None:
        self.assert_refused("Could not write", "get", "kept", str(self.directory / "no" / "f"))
        self.assert_refused("is a directory", "get", "kept", str(self.directory))

    def test_put_of_a_missing_file_or_a_directory(self) -> None:
        self.assert_refused("Could not read", "put", "new", str(self.directory / "missing"))
        self.assert_refused("Could not read", "put", "kept", str(self.directory / "missing"))
        self.assert_refused("Could not read", "put", "new", str(self.directory))

    def test_put_over_the_limit_stores_nothing(self) -> None:
        # A file's size is checked before anything is read...
        fix = (
            "Raise BLOBSTORE_STORAGES['small']['OPTIONS']['max_object_size'] (a number of "
            "bytes, or None for no limit) to store larger blobs."
        )
        self.assert_refused(
            "has 5 MiB, more than the limit of the storage 'small' (64 KiB); nothing was "
            f"stored. {fix}",
            *("put", "kept", str(self.source), "--storage", "small"),
        )
        # ... standard input's as it comes.
        self.assert_refused(
            f"Standard input is larger than the limit of the storage 'small' (64 KiB); nothing "
            f"was stored. {fix}",
            *("put", "kept", "-", "--storage", "small"),
            stdin=io.BytesIO(DATA),
        )
        self.assertEqual(get_bytes("kept", "--storage", "small"), b"small one")

    def test_orm_storage_keeps_no_chunk_of_a_refused_upload(self) -> None:
        limited = {"BACKEND": ORM, "OPTIONS": {"max_object_size": 2 * MIB + 1}}
        with override_settings(BLOBSTORE_STORAGES={"default": limited, "other": {"BACKEND": DICT}}):
            # Two chunks are in the database when the third goes over.
            self.assert_refused("nothing was stored", "put", "kept", "-", stdin=io.BytesIO(DATA))
            self.assert_refused("nothing was stored", "put", "new", "-", stdin=io.BytesIO(DATA))
        self.assertEqual(get_bytes("kept"), DATA)

    def test_unknown_alias(self) -> None:
        message = "No storage is called 'nope'; BLOBSTORE_STORAGES has 'default', 'other'"
        for arguments in (
            ["put", "k", str(self.source)],
            ["get", "kept"],
            ["ls"],
            ["rm", "kept"],
            ["stats"],
        ):
            with self.subTest(arguments[0]):
                self.assert_refused(message, *arguments, "--storage", "nope")
        self.assert_refused(message, "cp", "--from", "nope", "--to", "other")
        self.assert_refused(message, "cp", "--from", "default", "--to", "nope")

    def test_bad_keys(self) -> None:
        for key in ("", "x" * 1025):
            with self.subTest(length=len(key)):
                self.assert_refused("A key must be", "put", key, str(self.source))
                self.assert_refused("A key must be", "get", key)
                self.assert_refused("A key must be", "rm", "kept", key)

    def test_malformed_setting(self) -> None:
        with (
            override_settings(BLOBSTORE_STORAGES={"default": {"BACKEND": "no.such.Storage"}}),
            self.assertRaisesMessage(CommandError, "'no.such.Storage' could not be imported"),
        ):
            blobstore("ls")
        self.assertEqual(len(records("default")), 1)


class ListAndRemoveTests(CommandTestCase):
    KEYS = ["a", "a/1", "a/2", "a/2/x", "b", "ab", "A/1", "é"]

    def setUp(self) -> None:
        super().setUp()
        for number, key in enumerate(self.KEYS):
            blobstore("put", key, "-", stdin=io.BytesIO(b"x" * number))

    def test_ls_lists_every_key_in_order(self) -> None:
        out, _ = blobstore("ls")
        self.assertEqual(out.splitlines(), sorted(self.KEYS))

    def test_ls_by_prefix(self) -> None:
        self.assertEqual(blobstore("ls", "--prefix", "a/")[0].splitlines(), ["a/1", "a/2", "a/2/x"])
        self.assertEqual(blobstore("ls", "--prefix", "a/2")[0].splitlines(), ["a/2", "a/2/x"])
        self.assertEqual(blobstore("ls", "--prefix", "A")[0].splitlines(), ["A/1"])
        self.assertEqual(blobstore("ls", "--prefix", "zzz"), ("", ""))

    def test_ls_pages_through_the_listing(self) -> None:
        with mock.patch.object(command_module, "PAGE_SIZE", 3):
            out, _ = blobstore("ls")
        self.assertEqual(out.splitlines(), sorted(self.KEYS))

    def test_ls_by_folder(self) -> None:
        root = blobstore("ls", "--delimiter", "/")[0].splitlines()
        self.assertEqual(root, ["A/", "a", "a/", "ab", "b", "é"])
        listed = blobstore("ls", "--prefix", "a/", "--delimiter", "/")[0].splitlines()
        self.assertEqual(listed, ["a/1", "a/2", "a/2/"])
        with mock.patch.object(command_module, "PAGE_SIZE", 1):
            paged = blobstore("ls", "--prefix", "a/", "--delimiter", "/")[0].splitlines()
        self.assertEqual(paged, listed)
        long = blobstore("ls", "-l", "--prefix", "a/", "--delimiter", "/")[0].splitlines()
        self.assertEqual(long[-1].split(), ["PRE", "a/2/"])
        self.assertEqual(long[-1].index("a/2/"), long[0].index("a/1"))

    def test_ls_refuses_an_empty_delimiter(self) -> None:
        with self.assertRaisesMessage(CommandError, "delimiter must be a non-empty str"):
            blobstore("ls", "--delimiter", "")

    def test_ls_long(self) -> None:
        blobstore("put", "a/big", str(self.source))
        out, _ = blobstore("ls", "--long", "--prefix", "a/")
        lines = [line.split() for line in out.splitlines()]
        self.assertEqual([line[-1] for line in lines], ["a/1", "a/2", "a/2/x", "a/big"])
        size, updated, digest, key = lines[-1]
        self.assertEqual((int(size), digest, key), (len(DATA), DIGEST, "a/big"))
        self.assertRegex(updated, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(int(lines[0][0]), self.KEYS.index("a/1"))

    def test_rm_removes_and_reports_the_absent(self) -> None:
        out, err = blobstore("rm", "a/1", "missing", "b", "a/1")
        self.assertEqual(out, "Removed 2 blobs.\n")
        self.assertEqual(err, "No blob is stored under 'missing' in the storage 'default'.\n")
        self.assertEqual(blobstore("ls")[0].splitlines(), sorted(set(self.KEYS) - {"a/1", "b"}))

    def test_rm_of_a_large_blob_removes_its_chunks(self) -> None:
        blobstore("put", "big", str(self.source))
        self.assertGreater(BlobChunk.objects.count(), 0)
        blobstore("rm", "big")
        self.assertEqual(BlobChunk.objects.count(), 0)


class CopyTests(CommandTestCase):
    def setUp(self) -> None:
        super().setUp()
        blobstore("put", "big", str(self.source))
        for key in ("logs/1", "logs/2", "other"):
            blobstore("put", key, "-", stdin=io.BytesIO(key.encode()))

    def test_cp_copies_every_blob_byte_exact(self) -> None:
        out, err = blobstore("cp", "--from", "default", "--to", "other")
        size = len(DATA) + len(b"logs/1logs/2other")
        self.assertEqual(
            out, f"Copied 4 blobs, 5 MiB ({size:,} bytes), from 'default' to 'other'.\n"
        )
        self.assertEqual(err, "")
        self.assertEqual(records("other"), records("default"))
        self.assertEqual(get_bytes("big", "--storage", "other"), DATA)
        # And back, into a SQLite file, and from there to the ORM again.
        blobstore("cp", "--from", "other", "--to", "file")
        blobstore("rm", "big")
        blobstore("cp", "--from", "file", "--to", "default", "--prefix", "b")
        self.assertEqual(get_bytes("big"), DATA)
        self.assertEqual(BlobChunk.objects.count(), len(DATA) // CHUNK_SIZE)

    def test_cp_by_prefix_replaces(self) -> None:
        blobstore("put", "logs/1", "-", "--storage", "other", stdin=io.BytesIO(b"stale"))
        blobstore("put", "zzz", "-", "--storage", "other", stdin=io.BytesIO(b"kept"))
        out, _ = blobstore("cp", "--from", "default", "--to", "other", "--prefix", "logs/")
        self.assertIn("Copied 2 blobs, 12 bytes, from", out)
        self.assertEqual([record[0] for record in records("other")], ["logs/1", "logs/2", "zzz"])
        self.assertEqual(get_bytes("logs/1", "--storage", "other"), b"logs/1")

    def test_cp_copies_nothing_when_a_blob_is_over_the_target_limit(self) -> None:
        self.assert_refused(
            "The blob 'big' has 5 MiB, more than the limit of the storage 'small' (64 KiB); "
            "nothing was copied. Raise BLOBSTORE_STORAGES['small']['OPTIONS']['max_object_size']",
            *("cp", "--from", "default", "--to", "small"),
        )
        # Below the limit, it goes.
        out, _ = blobstore("cp", "--from", "default", "--to", "small", "--prefix", "logs")
        self.assertIn("Copied 2 blobs", out)

    def test_cp_onto_itself(self) -> None:
        self.assert_refused(
            "--from and --to both name the storage 'default'",
            *("cp", "--from", "default", "--to", "default"),
        )

    def test_cp_of_nothing(self) -> None:
        out, _ = blobstore("cp", "--from", "other", "--to", "default")
        self.assertEqual(out, "Copied 0 blobs, 0 bytes, from 'other' to 'default'.\n")
        self.assertEqual(len(records("default")), 4)


class StatsTests(CommandTestCase):
    def test_figures_of_every_storage(self) -> None:
        blobstore("put", "big", str(self.source))
        blobstore("put", "small", "-", stdin=io.BytesIO(b"12345"))
        blobstore("put", "x", "-", "--storage", "other", stdin=io.BytesIO(b"abc"))
        out, _ = blobstore("stats", "--json")
        figures = json.loads(out)
        self.assertEqual(list(figures), ["default", "other", "small", "file"])
        self.assertEqual(
            figures["default"],
            {
                "backend": "ORMStorage",
                "database": "default",
                "vendor": connections["default"].vendor,
                "blobs": 2,
                "bytes": len(DATA) + 5,
                "largest": {"key": "big", "size": len(DATA)},
                "chunk_rows": len(DATA) // CHUNK_SIZE,
                "unreferenced_chunk_rows": 0,
            },
        )
        self.assertEqual(
            figures["other"],
            {"backend": "DictStorage", "blobs": 1, "bytes": 3, "largest": {"key": "x", "size": 3}},
        )
        self.assertEqual(
            figures["file"], {"backend": "SQLiteStorage", "blobs": 0, "bytes": 0, "largest": None}
        )

    def test_text_of_one_storage(self) -> None:
        blobstore("put", "big", str(self.source))
        # A chunk of an upload in progress, or left over.
        BlobChunk.objects.create(version="12345678-1234-4234-8234-123456789abc", index=1, data=b"")
        out, _ = blobstore("stats", "--storage", "default")
        vendor = connections["default"].vendor
        chunks = len(DATA) // CHUNK_SIZE + 1
        self.assertEqual(
            out,
            f"default: ORMStorage on the database 'default' ({vendor})\n"
            "  blobs       1\n"
            f"  bytes       {len(DATA):,} (5 MiB)\n"
            f"  largest     5 MiB ({len(DATA):,} bytes), 'big'\n"
            f"  chunk rows  {chunks} (1 named by no blob)\n",
        )
        out, _ = blobstore("stats", "--storage", "other")
        self.assertEqual(out, "other: DictStorage\n  blobs       0\n  bytes       0 (0 bytes)\n"
                         "  largest     -\n")  # fmt: skip


class DamageMixin(TestCaseMixin):
    """Three blobs on one storage alias, and the ways a backend's rows can be damaged."""

    alias: str

    def setUp(self) -> None:
        super().setUp()
        for key, data in (("big", DATA), ("small", b"small"), ("z/big", DATA[::-1])):
            blobstore("put", key, "-", "--storage", self.alias, stdin=io.BytesIO(data))

    def delete_chunk(self, key: str, index: int) -> None:
        """Delete chunk row number index of the blob under key."""
        raise NotImplementedError

    def change_chunk(self, key: str, index: int) -> None:
        """Change one byte of chunk row number index of the blob under key."""
        raise NotImplementedError

    def record_size(self, key: str, size: int) -> None:
        """Record size as the size of the blob under key."""
        raise NotImplementedError

    def assert_damaged(self, problems: dict[str, str]) -> None:
        """Assert that verify fails, naming exactly the keys of problems, each with its problem."""
        status, out = verify("--storage", self.alias)
        self.assertEqual(status, 1, out)
        *lines, summary = out.splitlines()
        self.assertEqual(len(lines), len(problems), out)
        for line, (key, problem) in zip(lines, sorted(problems.items()), strict=True):
            self.assertTrue(line.startswith(f"{key!r}: "), out)
            self.assertIn(problem, line)
        self.assertRegex(summary, rf"^Verified 3 blobs, .* MiB \(.* bytes\), in the storage "
                         rf"'{self.alias}': {len(problems)} damaged\.$")  # fmt: skip

    def test_a_whole_store_passes(self) -> None:
        status, out = verify("--storage", self.alias)
        self.assertEqual(status, 0, out)
        self.assertEqual(
            out,
            f"Verified 3 blobs, 10 MiB ({2 * len(DATA) + 5:,} bytes), in the storage "
            f"{self.alias!r}: "
            "0 damaged.\n",
        )

    def test_missing_chunks(self) -> None:
        self.delete_chunk("big", 2)  # in the middle
        self.delete_chunk("z/big", 1)  # the first
        self.assert_damaged({"big": "A chunk of the blob is missing.", "z/big": "missing"})

    def test_a_blob_whose_chunks_are_all_gone(self) -> None:
        # What a replace that was cancelled at the wrong moment left (issue 8).
        for index in range(1, CHUNKS + 1):
            self.delete_chunk("big", index)
        self.assert_damaged({"big": "cannot be opened: "})

    def test_a_missing_last_chunk(self) -> None:
        self.delete_chunk("z/big", CHUNKS)
        self.assert_damaged({"z/big": "A chunk of the blob is missing."})

    def test_a_changed_byte(self) -> None:
        self.change_chunk("big", 3)
        self.assert_damaged({"big": "wrong SHA-256"})

    def test_a_wrong_size(self) -> None:
        self.record_size("small", 6)
        self.assert_damaged({"small": "wrong size: 5 bytes read, 6 recorded"})


class ORMDamageMixin(DamageMixin):
    using: str

    def chunk_rows(self, key: str, index: int) -> QuerySet[BlobChunk]:
        version = Blob.objects.using(self.using).get(key=key).version
        assert version is not None  # a blob of more than one chunk
        return BlobChunk.objects.using(self.using).filter(version=version, index=index)

    def delete_chunk(self, key: str, index: int) -> None:
        self.assertEqual(self.chunk_rows(key, index).delete()[0], 1)

    def change_chunk(self, key: str, index: int) -> None:
        row = self.chunk_rows(key, index).get()
        data = bytearray(row.data)
        data[100] ^= 1
        self.assertEqual(self.chunk_rows(key, index).update(data=bytes(data)), 1)

    def record_size(self, key: str, size: int) -> None:
        Blob.objects.using(self.using).filter(key=key).update(size=size)


class ORMVerifyTests(ORMDamageMixin, CommandTestCase):
    alias = "default"
    using = "default"

    def test_a_key_no_route_can_reach(self) -> None:
        # Stored before the key rule forbade control characters.
        Blob.objects.create(key="bad\nkey", data=b"x", size=1, sha256=DIGEST,
                            created=timezone.now(), updated=timezone.now())  # fmt: skip
        status, out = verify()
        self.assertEqual(status, 1)
        self.assertIn("'bad\\nkey': cannot be opened: ", out)
        self.assertTrue(out.endswith(": 1 damaged.\n"), out)

    def test_get_and_cp_name_a_damaged_blob(self) -> None:
        self.delete_chunk("big", 2)
        message = "The blob 'big' of the storage 'default' cannot be read: A chunk of the blob is"
        with self.assertRaisesMessage(CommandError, message):
            get_bytes("big")
        with self.assertRaisesMessage(CommandError, message):
            blobstore("cp", "--from", "default", "--to", "other")
        self.assertEqual(records("other"), [])
        for index in range(1, CHUNKS + 1):
            self.chunk_rows("z/big", index).delete()
        with self.assertRaisesMessage(CommandError, "The blob 'z/big' of the storage 'default' "):
            get_bytes("z/big")
        with self.assertRaisesMessage(CommandError, "The blob 'z/big' of the storage 'default' "):
            blobstore("cp", "--from", "default", "--to", "other", "--prefix", "z/")

    def test_a_terminal_gets_a_progress_bar(self) -> None:
        terminal = Terminal()
        with mock.patch.object(Command, "progress_delay", 0.0):
            call_command("blobstore", "verify", stdout=io.StringIO(), stderr=terminal)
        self.assertIn("verify default  [", terminal.getvalue())
        self.assertIn("100%  10.0/10.0 MiB", terminal.getvalue())

    def test_other_backends_pass(self) -> None:
        blobstore("cp", "--from", "default", "--to", "other")
        status, out = verify("--storage", "other")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("Verified 3 blobs, 10 MiB "), out)
        quiet = io.StringIO()
        call_command("blobstore", "-v", "0", "verify", stdout=quiet)
        self.assertEqual(quiet.getvalue(), "")


class SQLiteStorageVerifyTests(DamageMixin, CommandTestCase):
    alias = "file"

    def execute(self, sql: str, *parameters: object) -> int:
        with sqlite3.connect(self.directory / "blobs.sqlite3") as db:
            return db.execute(sql, parameters).rowcount

    def chunk(self, key: str, index: int) -> bytes:
        with sqlite3.connect(self.directory / "blobs.sqlite3") as db:
            (data,) = db.execute(
                f"SELECT data FROM chunks WHERE {self.CHUNK}", (index, key)
            ).fetchone()
        return bytes(data)

    CHUNK = "idx = ? AND version = (SELECT version FROM blobs WHERE key = ?)"

    def delete_chunk(self, key: str, index: int) -> None:
        self.assertEqual(self.execute(f"DELETE FROM chunks WHERE {self.CHUNK}", index, key), 1)

    def change_chunk(self, key: str, index: int) -> None:
        data = bytearray(self.chunk(key, index))
        data[100] ^= 1
        changed = self.execute(f"UPDATE chunks SET data = ? WHERE {self.CHUNK}", data, index, key)
        self.assertEqual(changed, 1)

    def record_size(self, key: str, size: int) -> None:
        self.assertEqual(self.execute("UPDATE blobs SET size = ? WHERE key = ?", size, key), 1)


class PurgeTests(CommandTestCase):
    def test_purge_deletes_abandoned_uploads_only(self) -> None:
        blobstore("put", "big", str(self.source))
        long_ago = timezone.now() - LONG_AGO
        BlobChunk.objects.update(created=long_ago)  # a live blob's chunks, however old, stay
        abandoned, in_progress = uuid.uuid4(), uuid.uuid4()
        for index in (1, 2, 3):
            BlobChunk.objects.create(version=abandoned, index=index, data=b"x", created=long_ago)
        for index in (1, 2):
            BlobChunk.objects.create(version=in_progress, index=index, data=b"y")
        out, _ = blobstore("purge")
        self.assertEqual(out, "Deleted 3 rows (expired blobs and chunks of abandoned uploads) "
                         "from the storage 'default'.\n")  # fmt: skip
        self.assertFalse(BlobChunk.objects.filter(version=abandoned).exists())
        self.assertEqual(BlobChunk.objects.filter(version=in_progress).count(), 2)
        out, _ = blobstore("purge", "--older-than", "3600")
        self.assertIn("Deleted 0 rows", out)
        out, _ = blobstore("purge", "--older-than", "0")
        self.assertIn("Deleted 2 rows", out)
        self.assertEqual(BlobChunk.objects.count(), CHUNKS)
        self.assertEqual(get_bytes("big"), DATA)
        self.assertEqual(verify()[0], 0)

    def test_purge_of_a_sqlite_file(self) -> None:
        blobstore("put", "big", str(self.source), "--storage", "file")
        with sqlite3.connect(self.directory / "blobs.sqlite3") as db:
            db.execute("UPDATE chunks SET created = created - 7200")
            db.executemany(
                "INSERT INTO chunks (version, idx, created, data) VALUES (?, ?, ?, x'00')",
                [(uuid.uuid4().hex, index, 0.0) for index in (1, 2)],
            )
        out, _ = blobstore("purge", "--storage", "file")
        self.assertEqual(out, "Deleted 2 rows (expired blobs and chunks of abandoned uploads) "
                         "from the storage 'file'.\n")  # fmt: skip
        self.assertEqual(get_bytes("big", "--storage", "file"), DATA)
        self.assertEqual(verify("--storage", "file")[0], 0)

    def test_a_storage_in_memory_purges_expired_blobs(self) -> None:
        out, _ = blobstore("purge", "--storage", "other")
        self.assertEqual(out, "Deleted 0 rows (expired blobs and chunks of abandoned uploads) "
                         "from the storage 'other'.\n")  # fmt: skip

    def test_purge_deletes_expired_blobs(self) -> None:
        store = ORMStorage()
        soon = timezone.now() + datetime.timedelta(seconds=60)
        for key in ("gone", "gone too"):
            async_to_sync(store.write)(key, once(DATA), expires=soon)
        blobstore("put", "kept", str(self.source))
        Blob.objects.filter(key__startswith="gone").update(expires=timezone.now())
        out, _ = blobstore("purge")
        self.assertIn("Deleted 2 rows", out)
        self.assertEqual(list(Blob.objects.values_list("key", flat=True)), ["kept"])

    def test_bad_ages(self) -> None:
        for age in ("-1", "nan", "inf", "1e99", "soon", "9" * 5000, ""):
            with self.subTest(age=age[:10]):
                self.assert_refused("argument --older-than: ", "purge", f"--older-than={age}")
        self.assert_refused("No storage is called 'nope'", "purge", "--storage", "nope")


@override_settings(
    BLOBSTORE_STORAGES={
        "default": {"BACKEND": ORM},
        "pg": {"BACKEND": ORM, "OPTIONS": {"using": "postgres", "max_object_size": None}},
    }
)
class PostgreSQLVerifyTests(ORMDamageMixin, TransactionTestCase):
    """verify and purge of ORMStorage on PostgreSQL."""

    databases = {"default", "postgres"}
    alias = "pg"
    using = "postgres"

    def test_purge(self) -> None:
        long_ago = timezone.now() - LONG_AGO
        BlobChunk.objects.using("postgres").update(created=long_ago)
        abandoned = uuid.uuid4()
        BlobChunk.objects.using("postgres").bulk_create(
            BlobChunk(version=abandoned, index=index, data=b"x", created=long_ago)
            for index in range(1, 4)
        )
        out, _ = blobstore("purge", "--storage", "pg")
        self.assertIn("Deleted 3 rows", out)
        self.assertEqual(BlobChunk.objects.using("postgres").count(), 2 * CHUNKS)
        self.assertEqual(verify("--storage", "pg")[0], 0)


@override_settings(
    BLOBSTORE_STORAGES={
        "default": {"BACKEND": ORM},
        "pg": {"BACKEND": ORM, "OPTIONS": {"using": "postgres", "max_object_size": None}},
    }
)
class PostgreSQLCopyTests(TransactionTestCase):
    """The default database (SQLite or PostgreSQL) and the PostgreSQL alias, both ways."""

    databases = {"default", "postgres"}

    def test_cp_to_postgresql_and_back(self) -> None:
        blobstore("put", "big", "-", stdin=io.BytesIO(DATA))
        blobstore("cp", "--from", "default", "--to", "pg")
        self.assertEqual(BlobChunk.objects.using("postgres").count(), len(DATA) // CHUNK_SIZE)
        self.assertEqual(get_bytes("big", "--storage", "pg"), DATA)
        blobstore("rm", "big")
        blobstore("cp", "--from", "pg", "--to", "default")
        self.assertEqual(get_bytes("big"), DATA)
        figures = json.loads(blobstore("stats", "--json", "--storage", "pg")[0])["pg"]
        self.assertEqual((figures["vendor"], figures["blobs"]), ("postgresql", 1))


class ProgressTests(CommandTestCase):
    def test_a_terminal_gets_a_progress_bar(self) -> None:
        terminal = Terminal()
        with mock.patch.object(Command, "progress_delay", 0.0):
            call_command("blobstore", "put", "k", str(self.source), stdout=io.StringIO(),
                         stderr=terminal)  # fmt: skip
        shown = terminal.getvalue()
        self.assertTrue(shown.startswith("\rput k  ["), shown)
        self.assertIn("100%  5.0/5.0 MiB", shown)
        self.assertIn("MiB/s", shown)
        self.assertTrue(shown.endswith("\n"))
        for subcommand in (["get", "k", str(self.directory / "out")],
                           ["cp", "--from", "default", "--to", "other"]):  # fmt: skip
            terminal = Terminal()
            with mock.patch.object(Command, "progress_delay", 0.0):
                call_command("blobstore", *subcommand, stdout=io.StringIO(), stderr=terminal)
            self.assertIn("100%", terminal.getvalue())

    def test_quiet_when_not_a_terminal_or_quick(self) -> None:
        with mock.patch.object(Command, "progress_delay", 0.0):
            self.assertEqual(blobstore("put", "k", str(self.source))[1], "")
        terminal = Terminal()
        call_command("blobstore", "put", "k", "-", stdin=io.BytesIO(b"x"), stdout=io.StringIO(),
                     stderr=terminal)  # fmt: skip
        self.assertEqual(terminal.getvalue(), "")  # done before the delay


class ProgressHelperTests(SimpleTestCase):
    def progress(self, total: int | None, **options: Any) -> tuple[Progress, Terminal, list[float]]:
        now = [0.0]
        terminal = Terminal()
        bar = Progress(terminal, total, "put k", clock=lambda: now[0], **options)
        return bar, terminal, now

    def test_figures(self) -> None:
        bar, terminal, now = self.progress(100 * MIB)
        now[0] = 2.0
        bar.advance(25 * MIB)
        self.assertEqual(
            terminal.getvalue(),
            "\rput k  [#####...............]  25%  25.0/100.0 MiB  12.5 MiB/s  0:06 left",
        )
        now[0] = 4.0
        bar.advance(75 * MIB)
        bar.finish()
        self.assertTrue(
            terminal.getvalue().endswith(
                "\rput k  [####################] 100%  100.0/100.0 MiB  25.0 MiB/s\n"
            )
        )

    def test_unknown_total(self) -> None:
        bar, terminal, now = self.progress(None)
        now[0] = 1.0
        bar.advance(3 * MIB)
        self.assertEqual(terminal.getvalue(), "\rput k  3.0 MiB  3.0 MiB/s")

    def test_delay_and_interval(self) -> None:
        bar, terminal, now = self.progress(10 * MIB, delay=0.5, interval=0.1)
        now[0] = 0.4
        bar.advance(MIB)
        self.assertEqual(terminal.getvalue(), "")
        bar.finish()  # nothing drawn, nothing to end
        self.assertEqual(terminal.getvalue(), "")
        now[0] = 0.6
        bar.advance(MIB)
        drawn = terminal.getvalue()
        now[0] = 0.65
        bar.advance(MIB)
        self.assertEqual(terminal.getvalue(), drawn)  # too soon to redraw
        now[0] = 0.8
        bar.advance(MIB)
        self.assertNotEqual(terminal.getvalue(), drawn)

    def test_silent_unless_a_terminal(self) -> None:
        stream = io.StringIO()
        with Progress(stream, 10, delay=0) as bar:
            bar.advance(10)
        self.assertEqual(stream.getvalue(), "")
        with Progress(stream, 10, delay=0, enabled=True) as bar:
            bar.advance(10)
        self.assertIn("100%", stream.getvalue())


SUBCOMMANDS = ("put", "get", "ls", "rm", "cp", "stats", "verify", "purge")
"""The subcommands that work on storages."""


class HelpTests(SimpleTestCase):
    def test_every_subcommand_has_help(self) -> None:
        parser = Command().create_parser("manage.py", "blobstore")
        subparsers = next(
            action for action in parser._actions if action.dest == "subcommand"
        ).choices
        assert isinstance(subparsers, dict)
        self.assertEqual(
            set(subparsers),
            {"token", "proxystore-config", "url", "import-media", *SUBCOMMANDS},
        )
        for name, subparser in subparsers.items():
            with self.subTest(name):
                text = subparser.format_help()
                self.assertIn(f"usage: manage.py blobstore {name}", text)
        self.assertIn("--storage ALIAS", subparsers["put"].format_help())
        self.assertIn("--from ALIAS --to ALIAS", subparsers["cp"].format_help())
        self.assertIn("--older-than SECONDS", subparsers["purge"].format_help())
        for name in SUBCOMMANDS:
            self.assertIn(name, parser.format_help())


class PipeTests(SimpleTestCase):
    """`manage.py blobstore` as a program, on a database of its own, in pipes."""

    directory: tempfile.TemporaryDirectory[str]
    environment: dict[str, str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.directory = tempfile.TemporaryDirectory()
        cls.environment = {**os.environ, "BLOBSTORE_VAR_DIR": cls.directory.name}
        cls.environment.pop("DATABASE_URL", None)
        cls.environment.pop("DJANGO_SETTINGS_MODULE", None)
        cls.manage("migrate", "--verbosity=0").check_returncode()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.directory.cleanup()
        super().tearDownClass()

    @classmethod
    def manage(cls, *arguments: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=cls.environment,
            input=data,
            capture_output=True,
            timeout=120,
        )

    def test_pipes_in_and_out_byte_exact_and_quiet(self) -> None:
        put = self.manage("blobstore", "put", "piped/data", "-", data=DATA)
        self.assertEqual((put.returncode, put.stderr), (0, b""))
        self.assertIn(DIGEST.encode(), put.stdout)
        got = self.manage("blobstore", "get", "piped/data")
        self.assertEqual((got.returncode, got.stderr), (0, b""))
        self.assertEqual(len(got.stdout), len(DATA))
        self.assertTrue(got.stdout == DATA, "get - wrote other bytes than put - read")
        listed = self.manage("blobstore", "ls", "--long", "--prefix", "piped/")
        self.assertEqual(listed.stdout.split()[-2:], [DIGEST.encode(), b"piped/data"])

    def test_verify_exit_status(self) -> None:
        self.manage("blobstore", "put", "verify/big", "-", data=DATA).check_returncode()
        self.addCleanup(self.manage, "blobstore", "rm", "verify/big")
        whole = self.manage("blobstore", "verify")
        self.assertEqual((whole.returncode, whole.stderr), (0, b""))
        self.assertIn(b"0 damaged.", whole.stdout)
        with sqlite3.connect(Path(self.directory.name, "blobstore.sqlite3")) as db:
            db.execute(
                'DELETE FROM blobstore_blobchunk WHERE "index" = 2 AND version = '
                "(SELECT version FROM blobstore_blob WHERE key = 'verify/big')"
            )
        damaged = self.manage("blobstore", "verify")
        self.assertEqual(damaged.returncode, 1)
        self.assertIn(b"'verify/big': cannot be read to the end", damaged.stdout)
        self.assertEqual(
            damaged.stderr, b"CommandError: 1 blob is damaged in the storage 'default'.\n"
        )

    def test_unknown_key_fails_with_a_message(self) -> None:
        got = self.manage("blobstore", "get", "no/such/key", "-")
        self.assertEqual(got.returncode, 1)
        self.assertEqual(got.stdout, b"")
        self.assertIn(b"No blob is stored under 'no/such/key'", got.stderr)
        self.assertNotIn(b"Traceback", got.stderr)


class InterruptTests(SimpleTestCase):
    """Ctrl-C in a command run as a program, sent to this process itself."""

    def test_after_the_clean_up_another_ctrl_c_cannot_cut_the_exit_short(self) -> None:
        previous = signal.getsignal(signal.SIGINT)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        command = Command()
        command.standalone = True

        async def work() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(60)

        with self.assertRaises(CommandError) as raised:
            command.run(work())
        self.assertEqual(str(raised.exception), "Interrupted.")
        self.assertEqual(raised.exception.returncode, 130)
        # Django writes "Interrupted." and exits next: a second Ctrl-C meanwhile
        # must not add "stopped at once" to a clean-up that is over.
        self.assertIs(signal.getsignal(signal.SIGINT), signal.SIG_IGN)
