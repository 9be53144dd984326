"""BlobFileStorage against Django's Storage contract, and FileField, ImageField, collectstatic."""

from __future__ import annotations

import datetime
import io
import os
import subprocess
import sys
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

from asgiref.sync import async_to_sync, sync_to_async
from django import forms
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.http import HttpRequest, HttpResponse
from django.test import SimpleTestCase, TestCase, TransactionTestCase, override_settings
from django.urls import path
from django.utils.datastructures import MultiValueDict
from PIL import Image

from blobstore.exceptions import ObjectSizeExceededError
from blobstore.files import BlobFile, BlobFileStorage
from blobstore.storage import BlobStream, StreamingStorage, storages
from blobstore.storage.base import MAX_KEY_LENGTH
from project.models import Document
from tests.images import png

DICT = {"default": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {}}}
# In memory: each test's storages.reset() starts an empty database.
SQLITE = {"default": {"BACKEND": "blobstore.storage.SQLiteStorage", "OPTIONS": {}}}
POSTGRES = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"using": "postgres"}}
}
MIB = 1024 * 1024


def keys() -> list[str]:
    """Return every key of the default blobstore storage."""
    store: Any = storages["default"]
    return [info.key for info in async_to_sync(store.list_blobs)()]


class CountingStreams:
    """Count the streams the default storage opens and the bytes they cover."""

    def __init__(self, test: SimpleTestCase) -> None:
        self.opened = 0
        self.bytes = 0
        store: StreamingStorage = storages["default"]  # type: ignore[assignment]
        original = store.stream

        async def counted(key: str, *, start: int = 0, stop: int | None = None) -> Any:
            stream: BlobStream | None = await original(key, start=start, stop=stop)
            if stream is not None:
                self.opened += 1
                self.bytes += stream.length
            return stream

        patcher = mock.patch.object(store, "stream", counted)
        patcher.start()
        test.addCleanup(patcher.stop)


@override_settings(BLOBSTORE_STORAGES=DICT)
class DictTestCase(SimpleTestCase):
    """Each test on an empty DictStorage."""

    def setUp(self) -> None:
        storages.reset()


class StorageAPITests(DictTestCase):
    """Every method of Django's Storage API, on a DictStorage."""

    def setUp(self) -> None:
        super().setUp()
        self.storage = BlobFileStorage(location="media/")

    def test_save_open_read_and_the_blob_it_is(self) -> None:
        name = self.storage.save("docs/report.txt", ContentFile(b"hello"))
        self.assertEqual(name, "docs/report.txt")
        self.assertEqual(keys(), ["media/docs/report.txt"])
        with self.storage.open(name) as file:
            assert isinstance(file, BlobFile)
            self.assertEqual(file.read(), b"hello")
            self.assertEqual(file.size, 5)
            self.assertEqual(file.content_type, "text/plain")
        self.assertTrue(self.storage.exists(name))
        self.assertFalse(self.storage.exists("docs/other.txt"))
        self.assertEqual(self.storage.size(name), 5)

    def test_text_mode_and_reopening(self) -> None:
        self.storage.save("a.txt", ContentFile("ünïcode\nline"))
        file = self.storage.open("a.txt", "r")
        self.assertEqual(file.readline(), "ünïcode\n")
        file.close()
        file.open()
        self.assertEqual(file.read(), "ünïcode\nline")
        file.close()

    def test_open_for_writing_is_refused(self) -> None:
        self.storage.save("a.txt", ContentFile(b"x"))
        with self.assertRaises(ValueError):
            self.storage.open("a.txt", "wb")

    def test_missing_files(self) -> None:
        for call in (self.storage.open, self.storage.size, self.storage.get_modified_time):
            with self.assertRaises(FileNotFoundError):
                call("absent.txt")
        self.storage.delete("absent.txt")  # no error, as FileSystemStorage
        with self.assertRaises(ValueError):
            self.storage.delete("")

    def test_empty_file(self) -> None:
        name = self.storage.save("empty.bin", ContentFile(b""))
        self.assertTrue(self.storage.exists(name))
        self.assertEqual(self.storage.size(name), 0)
        with self.storage.open(name) as file:
            self.assertEqual(file.read(), b"")
            self.assertEqual(list(file.chunks()), [])

    def test_collisions_get_another_name(self) -> None:
        first = self.storage.save("a/photo.tar.gz", ContentFile(b"1"))
        second = self.storage.save("a/photo.tar.gz", ContentFile(b"2"))
        self.assertEqual(first, "a/photo.tar.gz")
        self.assertRegex(second, r"^a/photo_[A-Za-z0-9]{7}\.tar\.gz$")
        self.assertEqual(self.storage.open(first).read(), b"1")
        self.assertEqual(self.storage.open(second).read(), b"2")

    def test_a_name_taken_between_choice_and_write_is_chosen_again(self) -> None:
        with mock.patch.object(BlobFileStorage, "is_name_available", return_value=True):
            self.storage.save("race.txt", ContentFile(b"first"))
            with mock.patch.object(
                BlobFileStorage, "get_available_name", return_value="race_2.txt"
            ):
                name = self.storage.save("race.txt", ContentFile(b"second"))
        self.assertEqual(name, "race_2.txt")
        self.assertEqual(self.storage.open("race.txt").read(), b"first")

    def test_allow_overwrite(self) -> None:
        storage = BlobFileStorage(location="media/", allow_overwrite=True)
        storage.save("a.txt", ContentFile(b"old"))
        self.assertEqual(storage.save("a.txt", ContentFile(b"new")), "a.txt")
        self.assertEqual(storage.open("a.txt").read(), b"new")
        # As FileSystemStorage: a name too long is cut short, not made unique.
        self.assertEqual(storage.save("abcdef.txt", ContentFile(b"x"), max_length=5), "a.txt")

    def test_max_length_truncates_then_refuses(self) -> None:
        self.storage.save("longname.txt", ContentFile(b"1"))
        name = self.storage.save("longname.txt", ContentFile(b"2"), max_length=16)
        self.assertLessEqual(len(name), 16)
        self.assertTrue(name.endswith(".txt"))
        with self.assertRaises(SuspiciousFileOperation):
            self.storage.save("longname.txt", ContentFile(b"3"), max_length=8)
        self.assertEqual(len(keys()), 2)

    def test_unsafe_names_store_nothing(self) -> None:
        for name in ("../escape.txt", "a/../../escape.txt", "/etc/passwd", "a/..", "", "C:\\x.txt"):
            with self.subTest(name=name), self.assertRaises(SuspiciousFileOperation):
                self.storage.save(name, ContentFile(b"x"))
        for name in ("..\\escape.txt", "a\\..\\..\\x"):
            with self.subTest(name=name), self.assertRaises(SuspiciousFileOperation):
                self.storage.save(name, ContentFile(b"x"))
        for call in (self.storage.open, self.storage.exists, self.storage.delete):
            with self.assertRaises(SuspiciousFileOperation):
                call("../media/x")
        self.assertEqual(keys(), [])

    def test_windows_separators_become_slashes(self) -> None:
        name = self.storage.save("dir\\sub\\file.txt", ContentFile(b"x"))
        self.assertEqual(name, "dir/sub/file.txt")
        self.assertEqual(keys(), ["media/dir/sub/file.txt"])
        self.assertTrue(self.storage.exists("dir\\sub\\file.txt"))

    def test_a_name_too_long_for_a_key_stores_nothing(self) -> None:
        with self.assertRaises(ValueError):
            self.storage.save("x" * MAX_KEY_LENGTH + ".txt", ContentFile(b"x"))
        self.assertEqual(keys(), [])

    @override_settings(
        BLOBSTORE_STORAGES={
            "default": {
                "BACKEND": "blobstore.storage.DictStorage",
                "OPTIONS": {"max_object_size": 2 * MIB},
            }
        }
    )
    def test_a_file_over_the_limit_names_the_setting_that_raises_it(self) -> None:
        storages.reset()
        with self.assertRaises(ObjectSizeExceededError) as raised:
            self.storage.save("big.bin", ContentFile(b"x" * (2 * MIB + 1)))
        self.assertEqual(
            str(raised.exception),
            "The blob is larger than the limit of 2 MiB. Raise "
            "BLOBSTORE_STORAGES['default']['OPTIONS']['max_object_size'] (a number of bytes, "
            "or None for no limit) to store larger blobs.",
        )
        self.assertEqual(keys(), [])

    def test_listdir_by_slash(self) -> None:
        for name in ("top.txt", "a/one.txt", "a/two.txt", "a/b/deep.txt", "é/ü.txt", "z.txt"):
            self.storage.save(name, ContentFile(b"x"))
        BlobFileStorage(location="other/").save("elsewhere.txt", ContentFile(b"x"))
        self.assertEqual(self.storage.listdir(""), (["a", "é"], ["top.txt", "z.txt"]))
        self.assertEqual(self.storage.listdir("a"), (["b"], ["one.txt", "two.txt"]))
        self.assertEqual(self.storage.listdir("a/"), (["b"], ["one.txt", "two.txt"]))
        self.assertEqual(self.storage.listdir("a/b"), ([], ["deep.txt"]))
        self.assertEqual(self.storage.listdir("none"), ([], []))
        # Directories exist as in FileSystemStorage; a file may share a directory's name.
        for name in ("", "a", "a/", "a/b", "é"):
            self.assertTrue(self.storage.exists(name), name)
        self.assertFalse(self.storage.exists("none"))
        self.assertFalse(self.storage.exists("a/on"))
        self.assertEqual(self.storage.save("a", ContentFile(b"file a")), "a")
        with self.assertRaises(SuspiciousFileOperation):
            self.storage.listdir("../other")

    def test_listdir_pages_through_many_entries(self) -> None:
        for number in range(1205):
            self.storage.save(f"many/{number:05}", ContentFile(b""))
        directories, files = self.storage.listdir("many")
        self.assertEqual(directories, [])
        self.assertEqual(files, [f"{number:05}" for number in range(1205)])

    def test_times_are_aware_with_use_tz(self) -> None:
        before = datetime.datetime.now(datetime.UTC)
        self.storage.save("a.txt", ContentFile(b"x"))
        modified = self.storage.get_modified_time("a.txt")
        self.assertIsNotNone(modified.tzinfo)
        self.assertGreaterEqual(modified, before - datetime.timedelta(seconds=1))
        self.assertLessEqual(self.storage.get_created_time("a.txt"), modified)
        self.storage.delete("a.txt")
        with self.assertRaises(FileNotFoundError):
            self.storage.get_created_time("a.txt")

    @override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
    def test_times_are_naive_local_without_use_tz(self) -> None:
        self.storage.save("a.txt", ContentFile(b"x"))
        modified = self.storage.get_modified_time("a.txt")
        self.assertIsNone(modified.tzinfo)
        paris = datetime.datetime.now(datetime.UTC).astimezone(
            datetime.timezone(datetime.timedelta(hours=1))
        )
        self.assertLess(abs(modified - paris.replace(tzinfo=None)), datetime.timedelta(minutes=1))

    def test_deconstructs_for_migrations(self) -> None:
        storage = BlobFileStorage(alias="default", location="media/", allow_overwrite=True)
        path_, _, kwargs = storage.deconstruct()  # type: ignore[attr-defined]
        self.assertEqual(path_, "blobstore.files.BlobFileStorage")
        self.assertEqual(
            kwargs, {"alias": "default", "location": "media/", "allow_overwrite": True}
        )

    def test_bad_options(self) -> None:
        with self.assertRaises(ValueError):
            BlobFileStorage(location="/abs/")
        with self.assertRaises(TypeError):
            BlobFileStorage(alias=1)  # type: ignore[arg-type]

    def test_the_location_keeps_files_apart(self) -> None:
        BlobFileStorage(location="a/").save("x.txt", ContentFile(b"a"))
        BlobFileStorage(location="b/").save("x.txt", ContentFile(b"b"))
        self.assertEqual(BlobFileStorage(location="a/").open("x.txt").read(), b"a")
        self.assertEqual(keys(), ["a/x.txt", "b/x.txt"])

    def test_url_is_signed_for_the_default_alias(self) -> None:
        self.storage.save("a b?#.txt", ContentFile(b"x"))
        url = self.storage.url("a b?#.txt")
        self.assertRegex(
            url, r"^/blobs/media/a%20b%3F%23\.txt\?method=GET&expires=\d+&signature=[\w-]+$"
        )
        with self.assertRaises(NotImplementedError):
            BlobFileStorage(alias="other").url("a.txt")

    @override_settings(BLOBSTORE_ANONYMOUS_ACCESS="read")
    def test_url_is_plain_when_reads_are_open(self) -> None:
        self.assertEqual(self.storage.url("a.txt"), "/blobs/media/a.txt")

    @override_settings(ROOT_URLCONF="tests.test_files")
    def test_url_without_the_api_mounted_says_so(self) -> None:
        with self.assertRaisesMessage(ImproperlyConfigured, "include('blobstore.urls')"):
            self.storage.url("a.txt")

    def test_a_storage_that_cannot_stream_is_refused(self) -> None:
        class Plain:
            async def get(self, key: str, default: bytes | None = None) -> bytes | None:
                raise NotImplementedError

            async def set(self, key: str, blob: bytes) -> None:
                raise NotImplementedError

            async def exists(self, key: str) -> bool:
                raise NotImplementedError

            async def evict(self, key: str) -> None:
                raise NotImplementedError

            async def close(self) -> None:
                raise NotImplementedError

        with (
            mock.patch.dict(storages._storages, {"plain": Plain()}),
            self.assertRaisesMessage(ImproperlyConfigured, "needs a storage that streams"),
        ):
            BlobFileStorage(alias="plain").exists("a")


def upload_view(request: HttpRequest) -> HttpResponse:
    """A sync view that saves the request body with default_storage and reads it back."""
    name = default_storage.save("views/body.bin", ContentFile(request.body))
    with default_storage.open(name) as file:
        return HttpResponse(file.read(), content_type="application/octet-stream")


# A site with a sync view that did not mount the API.
urlpatterns = [path("upload", upload_view)]


@override_settings(BLOBSTORE_STORAGES=SQLITE)
class SQLiteStorageAPITests(StorageAPITests):
    """The same on a SQLiteStorage, whose one connection serves each sync call's own event loop."""


class SyncProgramTests(SimpleTestCase):
    """A program that uses BlobFileStorage synchronously and never closes a storage."""

    def test_it_exits_over_a_sqlite_file(self) -> None:
        # aiosqlite's thread is not a daemon: left open, it kept the process alive at exit.
        with tempfile.TemporaryDirectory() as directory:
            program = SYNC_PROGRAM.format(database=os.path.join(directory, "blobs.sqlite3"))
            done = subprocess.run(
                [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
            )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(done.stdout.split(), ["a.txt", "hello", "True"])


SYNC_PROGRAM = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["blobstore"],
    BLOBSTORE_STORAGES={{"default": {{
        "BACKEND": "blobstore.storage.SQLiteStorage",
        "OPTIONS": {{"database_path": {database!r}}},
    }}}},
)
django.setup()
from django.core.files.base import ContentFile
from blobstore.files import BlobFileStorage
storage = BlobFileStorage(location="media/")
print(storage.save("a.txt", ContentFile(b"hello")))
print(storage.open("a.txt").read().decode())
print(storage.exists("a.txt"))
"""


class StreamingTests(DictTestCase):
    """Files move in bounded pieces, and opening reads nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.storage = BlobFileStorage(location="media/")
        self.data = bytes(range(256)) * (12 * MIB // 256)
        self.storage.save("big.bin", ContentFile(self.data))
        self.streams = CountingStreams(self)

    def test_open_reads_nothing_until_read(self) -> None:
        file = self.storage.open("big.bin")
        self.assertEqual((self.streams.opened, self.streams.bytes), (0, 0))
        self.assertEqual(file.size, len(self.data))
        self.assertEqual(file.read(10), self.data[:10])
        self.assertLessEqual(self.streams.bytes, 64 * 1024)
        file.seek(5 * MIB)
        self.assertEqual(file.read(3), self.data[5 * MIB : 5 * MIB + 3])
        self.assertLessEqual(self.streams.bytes, 128 * 1024)
        file.close()

    def test_chunks_come_one_mebibyte_at_a_time(self) -> None:
        with self.storage.open("big.bin") as file:
            sizes = [len(chunk) for chunk in file.chunks()]
        self.assertEqual(sizes, [MIB] * 12)
        self.assertEqual(self.streams.bytes, len(self.data))

    def test_save_streams_its_content_in_chunks(self) -> None:
        written: list[int] = []
        store: Any = storages["default"]
        original = store.write

        async def write(key: str, chunks: Any, **options: Any) -> Any:
            async def seen() -> Any:
                async for chunk in chunks:
                    written.append(len(chunk))
                    yield chunk

            return await original(key, seen(), **options)

        upload = File(io.BytesIO(self.data), name="up.bin")
        with mock.patch.object(store, "write", write):
            self.storage.save("copy.bin", upload)
        self.assertEqual(written, [MIB] * 12)
        self.assertEqual(self.storage.open("copy.bin").read(), self.data)

    def test_a_file_replaced_while_read_raises(self) -> None:
        storage = BlobFileStorage(location="media/", allow_overwrite=True)
        file = storage.open("big.bin")
        file.read(1)
        storage.save("big.bin", ContentFile(b"new"))
        with self.assertRaises(OSError):
            file.read()

    def test_copying_from_one_blob_file_to_another(self) -> None:
        with self.storage.open("big.bin") as source:
            BlobFileStorage(location="copy/").save("big.bin", source)
        self.assertEqual(BlobFileStorage(location="copy/").size("big.bin"), len(self.data))


@override_settings(BLOBSTORE_STORAGES=SQLITE)
class SQLiteStreamingTests(StreamingTests):
    """The same on a SQLiteStorage."""


class AsyncTests(DictTestCase):
    """From a coroutine: the async twins, and the sync API through sync_to_async."""

    async def test_async_twins(self) -> None:
        storage = BlobFileStorage(location="media/")
        name = await storage.asave("a.txt", ContentFile(b"hello"))
        self.assertEqual(name, "a.txt")
        self.assertTrue(await storage.aexists("a.txt"))
        self.assertNotEqual(await storage.asave("a.txt", ContentFile(b"again")), name)
        stream = await storage.aopen("a.txt")
        async with stream:
            self.assertEqual(await stream.read(), b"hello")
        await storage.adelete("a.txt")
        self.assertFalse(await storage.aexists("a.txt"))
        with self.assertRaises(FileNotFoundError):
            await storage.aopen("a.txt")

    async def test_the_sync_api_through_sync_to_async(self) -> None:
        storage = BlobFileStorage(location="media/")
        name = await sync_to_async(storage.save)("b.txt", ContentFile(b"bytes"))
        file = await sync_to_async(storage.open)(name)
        self.assertEqual(await sync_to_async(file.read)(), b"bytes")
        self.assertEqual(await sync_to_async(storage.listdir)(""), ([], ["b.txt"]))

    async def test_the_sync_api_in_a_coroutine_says_what_to_do(self) -> None:
        storage = BlobFileStorage(location="media/")
        with self.assertRaisesMessage(RuntimeError, "async"):
            storage.exists("a.txt")


class ORMMixin:
    """BlobFileStorage over ORMStorage on the test's database, from every kind of caller."""

    def test_sync_view(self: Any) -> None:
        with override_settings(ROOT_URLCONF=__name__):
            response = self.client.post(
                "/upload", data=b"from a view", content_type="application/octet-stream"
            )
        self.assertEqual(response.content, b"from a view")

    def test_management_command_and_a_large_file(self: Any) -> None:
        data = b"0123456789abcdef" * (3 * MIB // 16)
        with tempfile.NamedTemporaryFile() as source:
            source.write(data)
            source.flush()
            storage = BlobFileStorage(location="media/")
            with open(source.name, "rb") as handle:
                storage.save("large.bin", File(handle))
        out = StringIO()
        call_command("blobstore", "get", "media/large.bin", "-", stdout=out)
        with storage.open("large.bin") as file:
            self.assertEqual(b"".join(file.chunks()), data)

    async def test_async_callers(self: Any) -> None:
        storage = BlobFileStorage(location="media/")
        await storage.asave("async.txt", ContentFile(b"async"))
        name = await sync_to_async(storage.save)("sync.txt", ContentFile(b"sync"))
        stream = await storage.aopen(name)
        async with stream:
            self.assertEqual(await stream.read(), b"sync")
        self.assertTrue(await storage.aexists("async.txt"))
        file = await sync_to_async(storage.open)("async.txt")
        self.assertEqual(await sync_to_async(file.read)(), b"async")
        await storage.adelete("async.txt")
        self.assertFalse(await sync_to_async(storage.exists)("async.txt"))


class SQLiteOrDefaultORMTests(ORMMixin, TransactionTestCase):
    databases = {"default", "postgres"}


@override_settings(BLOBSTORE_STORAGES=POSTGRES)
class PostgreSQLORMTests(ORMMixin, TransactionTestCase):
    databases = {"default", "postgres"}


class CoverForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Document
        fields = ["title", "file", "cover"]


class ModelTests(TestCase):
    """FileField and ImageField of the demo model, on the site's default storage."""

    def test_model_form_round_trip(self) -> None:
        image = png(40, 30)
        form = CoverForm(
            data={"title": "Report"},
            files=MultiValueDict(
                {
                    "file": [SimpleUploadedFile("report.pdf", b"%PDF-1.4 ...")],
                    "cover": [SimpleUploadedFile("cover.png", image)],
                }
            ),
        )
        self.assertTrue(form.is_valid(), form.errors)
        document = form.save()
        self.assertEqual(document.file.name, "documents/report.pdf")
        self.assertIn("media/covers/cover.png", keys())
        document = Document.objects.get(pk=document.pk)
        self.assertEqual(document.file.read(), b"%PDF-1.4 ...")
        self.assertEqual(document.file.size, 12)
        self.assertTrue(document.file.url.startswith("/blobs/media/documents/report.pdf?"))

    def test_image_dimensions_are_read_from_the_header(self) -> None:
        noise = Image.frombytes("RGB", (1000, 750), os.urandom(1000 * 750 * 3))
        buffer = io.BytesIO()
        noise.save(buffer, "PNG")
        big = buffer.getvalue()
        document = Document.objects.create(
            title="Big", file=ContentFile(b"x", name="x.txt"), cover=ContentFile(big, "big.png")
        )
        streams = CountingStreams(self)
        document = Document.objects.get(pk=document.pk)
        self.assertEqual((document.cover.width, document.cover.height), (1000, 750))
        self.assertLess(streams.bytes, len(big))
        self.assertLessEqual(streams.bytes, 64 * 1024)

    def test_an_invalid_image_is_refused_by_the_form(self) -> None:
        form = CoverForm(
            data={"title": "Bad"},
            files=MultiValueDict(
                {
                    "file": [SimpleUploadedFile("a.txt", b"a")],
                    "cover": [SimpleUploadedFile("cover.png", b"not an image")],
                }
            ),
        )
        self.assertFalse(form.is_valid())
        self.assertEqual(keys(), [])


class AdminTests(TestCase):
    def test_upload_through_the_admin(self) -> None:
        User.objects.create_superuser("admin", password="pw")
        self.client.login(username="admin", password="pw")
        page = self.client.get("/admin/project/document/add/")
        self.assertContains(page, 'type="file" name="file"')
        response = self.client.post(
            "/admin/project/document/add/",
            {
                "title": "Admin upload",
                "file": SimpleUploadedFile("notes.txt", b"notes"),
                "cover": SimpleUploadedFile("c.png", png(8, 8)),
            },
        )
        self.assertEqual(response.status_code, 302)
        document = Document.objects.get()
        self.assertEqual(document.file.read(), b"notes")
        change = self.client.get(f"/admin/project/document/{document.pk}/change/")
        self.assertContains(change, "/blobs/media/documents/notes.txt?method=GET")

    def test_the_demo_page_shows_images_through_signed_urls(self) -> None:
        Document.objects.create(
            title="With cover",
            file=ContentFile(b"x", "x.txt"),
            cover=ContentFile(png(4, 3), "c.png"),
        )
        page = self.client.get("/documents/")
        self.assertContains(page, 'src="/blobs/media/covers/c.png?method=GET&amp;expires=')
        self.assertContains(page, 'width="4" height="3"')
        image_url = page.content.decode().split('src="')[1].split('"')[0].replace("&amp;", "&")
        image = self.client.get(image_url)
        self.assertEqual(image.status_code, 200)
        self.assertEqual(image.content, png(4, 3))


class StaticFilesTests(TransactionTestCase):
    databases = {"default", "postgres"}

    def test_collectstatic(self) -> None:
        static = {
            "BACKEND": "blobstore.files.BlobFileStorage",
            "OPTIONS": {"location": "static/", "allow_overwrite": True},
        }
        with override_settings(STORAGES={"default": static, "staticfiles": static}):
            out = StringIO()
            call_command("collectstatic", interactive=False, stdout=out)
            self.assertRegex(out.getvalue(), r"[1-9]\d* static files copied")
            self.assertIn("static/admin/css/base.css", keys())
            again = StringIO()
            call_command("collectstatic", interactive=False, stdout=again)
            self.assertRegex(again.getvalue(), r"\b0 static files copied, [1-9]\d* unmodified")
            call_command("collectstatic", interactive=False, clear=True, verbosity=0)
            self.assertIn("static/admin/css/base.css", keys())


class ImportMediaTests(TransactionTestCase):
    databases = {"default", "postgres"}

    def test_every_file_of_another_storage_is_copied(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            (root / "a" / "b").mkdir(parents=True)
            (root / "top.txt").write_bytes(b"top")
            (root / "a" / "one.bin").write_bytes(b"1" * (2 * MIB + 5))
            (root / "a" / "b" / "deep.txt").write_bytes(b"")
            stores = {
                "default": {"BACKEND": "blobstore.files.BlobFileStorage"},
                "old": {
                    "BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": directory},
                },
            }
            with override_settings(STORAGES=stores):
                out = StringIO()
                call_command("blobstore", "import-media", "--from", "old", stdout=out)
                self.assertIn(
                    "Imported 3 files, 2 MiB (2,097,160 bytes), from 'old' to 'default'",
                    out.getvalue(),
                )
                self.assertEqual(sorted(keys()), ["a/b/deep.txt", "a/one.bin", "top.txt"])
                self.assertEqual(default_storage.open("a/one.bin").read(), b"1" * (2 * MIB + 5))
                with self.assertRaisesMessage(Exception, "not a BlobFileStorage"):
                    call_command("blobstore", "import-media", "--from", "default", "--to", "old")
                with self.assertRaisesMessage(Exception, "No file storage is called 'nope'"):
                    call_command("blobstore", "import-media", "--from", "nope")
            small = {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"max_object_size": MIB}}
            with (
                override_settings(STORAGES=stores, BLOBSTORE_STORAGES={"default": small}),
                self.assertRaisesMessage(
                    CommandError,
                    "The file 'a/one.bin' was not imported: The blob is larger than the limit of "
                    "1 MiB. Raise BLOBSTORE_STORAGES['default']['OPTIONS']['max_object_size']",
                ),
            ):
                storages.reset()
                call_command("blobstore", "import-media", "--from", "old")
            storages.reset()
            self.assertIsInstance(FileSystemStorage(location=directory).listdir(""), tuple)
