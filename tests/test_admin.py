"""The blob admin through Django's test clients: lists, pages, forms, actions, permissions."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import zipfile
from typing import Any
from unittest import mock
from urllib.parse import quote

from asgiref.sync import async_to_sync
from django.contrib import admin as django_admin
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile
from django.core.paginator import EmptyPage, PageNotAnInteger
from django.db import connection, connections
from django.http import StreamingHttpResponse
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.datastructures import MultiValueDict

from blobstore.admin.changelist import MAX_ROWS, BlobPaginator, Totals, blob_totals
from blobstore.admin.downloads import zip_entry_names
from blobstore.admin.forms import BlobAddForm, key_error
from blobstore.admin.previews import as_text, hex_dump, image_type
from blobstore.models import Blob, BlobChunk
from blobstore.storage import ORMStorage
from tests.images import png

MIB = 1024 * 1024  # blobs over this size are stored in chunks
CHANGELIST = reverse("admin:blobstore_blob_changelist")
ADD = reverse("admin:blobstore_blob_add")
SCRIPT = b"<script>window.pwned=1;alert(1)</script>"
BLOB_DELETE = 'DELETE FROM "blobstore_blob" '
AWKWARD_KEY = 'it\'s "quoted"/100%/ключ/naïve 😀.txt'
"""A key with quotes, slashes, a percent sign and Unicode, which URLs must carry whole."""


def url(view: str, blob: Blob) -> str:
    return reverse(f"admin:blobstore_blob_{view}", args=[blob.pk])


def store(key: str, data: bytes, using: str = "default") -> Blob:
    """Store data under key through ORMStorage; return the row, without its data."""
    async_to_sync(ORMStorage(using=using).set)(key, data)
    return Blob.objects.using(using).defer("data").get(key=key)


def stored(key: str) -> bytes | None:
    return async_to_sync(ORMStorage().get)(key)


def user_with(*codenames: str) -> User:
    user = User.objects.create_user("_".join(codenames) or "nobody", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def keys(response: Any) -> list[str]:
    return [blob.key for blob in response.context["cl"].result_list]


async def body(response: Any) -> bytes:
    assert isinstance(response, StreamingHttpResponse) and response.is_async
    return b"".join([chunk async for chunk in response])


class AdminTestCase(TestCase):
    admin: User

    @classmethod
    def setUpTestData(cls) -> None:
        cls.admin = User.objects.create_superuser("admin", password="pw")

    def setUp(self) -> None:
        self.client.force_login(self.admin)


class ChangeListTests(AdminTestCase):
    small: Blob

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.small = store("logs/a.txt", b"a" * 10)
        store("logs/b.txt", b"b" * 2000)
        store("logs0", b"")
        store("Logs/c.txt", b"c" * 300_000)
        store("blogs/x", b"x" * 5)
        store("ключ/файл", "данные".encode())
        old = timezone.now() - datetime.timedelta(days=30)
        Blob.objects.filter(key="blogs/x").update(updated=old)

    def test_columns_show_key_size_digest_and_time(self) -> None:
        response = self.client.get(CHANGELIST, {"q": "logs/a"})
        digest = self.small.sha256
        link = f"{url('change', self.small)}?_changelist_filters=q%3Dlogs%252Fa"
        self.assertContains(response, f'<a href="{link}">logs/a.txt</a>')
        self.assertContains(response, '<td class="field-human_size">10\xa0bytes</td>')
        self.assertContains(response, f'<code title="{digest}">{digest[:12]}…</code>')
        self.assertContains(response, '<td class="field-updated nowrap">')

    def test_the_list_never_selects_blob_data(self) -> None:
        for params in [{}, {"q": "logs/"}, {"size": "1-1024", "o": "-2"}, {"o": "3.4"}]:
            with self.subTest(params=params), CaptureQueriesContext(connection) as queries:
                self.assertEqual(self.client.get(CHANGELIST, params).status_code, 200)
            selects = [q["sql"] for q in queries if "blobstore_blob" in q["sql"]]
            self.assertGreaterEqual(len(selects), 2)  # the totals and the page
            for sql in selects:
                self.assertNotIn('"data"', sql)

    def test_search_is_a_case_sensitive_prefix_on_the_key_range(self) -> None:
        for prefix, expected in [
            ("logs/", ["logs/a.txt", "logs/b.txt"]),
            ("Logs", ["Logs/c.txt"]),
            ("logs", ["logs/a.txt", "logs/b.txt", "logs0"]),
            ("ключ/", ["ключ/файл"]),
            ("nothing", []),
        ]:
            with self.subTest(prefix=prefix), CaptureQueriesContext(connection) as queries:
                self.assertEqual(keys(self.client.get(CHANGELIST, {"q": prefix})), expected)
            page_sql = queries[-1]["sql"] if expected else ""
            self.assertNotIn("LIKE", "".join(q["sql"] for q in queries))
            if expected:
                self.assertIn(">=", page_sql)
                self.assertIn("<", page_sql.replace("<=", ""))

    def test_a_nul_in_the_search_is_an_error_message_not_a_crash(self) -> None:
        response = self.client.get(CHANGELIST, {"q": "a\x00b"})
        self.assertEqual(response.status_code, 200)

    def test_size_filter_takes_its_choices_and_any_range(self) -> None:
        for size, expected in [
            ("0-1", ["logs0"]),
            ("1-1024", ["blogs/x", "logs/a.txt", "ключ/файл"]),
            ("1024-1048576", ["Logs/c.txt", "logs/b.txt"]),
            ("1048576-", []),
            ("2000-300001", ["Logs/c.txt", "logs/b.txt"]),
        ]:
            with self.subTest(size=size):
                self.assertEqual(keys(self.client.get(CHANGELIST, {"size": size})), expected)
        page = self.client.get(CHANGELIST)
        self.assertContains(page, "?size=1024-1048576")
        self.assertContains(page, "1 KiB to 1 MiB")

    def test_a_malformed_size_range_is_refused(self) -> None:
        for size in ["abc", "5", "-5", "1-2-3", "٣-5"]:
            with self.subTest(size=size):
                response = self.client.get(CHANGELIST, {"size": size})
                self.assertRedirects(response, f"{CHANGELIST}?e=1", fetch_redirect_response=False)

    def test_updated_filter(self) -> None:
        page = self.client.get(CHANGELIST)
        self.assertContains(page, "Past 7 days")
        today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        week = {
            "updated__gte": str(today - datetime.timedelta(days=7)),
            "updated__lt": str(today + datetime.timedelta(days=1)),
        }
        self.assertNotIn("blogs/x", keys(self.client.get(CHANGELIST, week)))
        self.assertEqual(len(keys(self.client.get(CHANGELIST, week))), 5)
        older = {"updated__lt": str(today - datetime.timedelta(days=7))}
        self.assertEqual(keys(self.client.get(CHANGELIST, older)), ["blogs/x"])

    def test_sorting_by_size_and_by_time(self) -> None:
        by_size = keys(self.client.get(CHANGELIST, {"o": "2"}))
        self.assertEqual(by_size[:3], ["logs0", "blogs/x", "logs/a.txt"])
        self.assertEqual(keys(self.client.get(CHANGELIST, {"o": "-2"}))[0], "Logs/c.txt")
        self.assertEqual(keys(self.client.get(CHANGELIST, {"o": "4"}))[0], "blogs/x")
        self.assertEqual(keys(self.client.get(CHANGELIST))[0], "Logs/c.txt")  # by key

    def test_totals_of_the_list_are_above_it(self) -> None:
        page = self.client.get(CHANGELIST).content.decode()
        total = 10 + 2000 + 300_000 + 5 + len("данные".encode())
        self.assertEqual(blob_totals(Blob.objects.all()), Totals(6, total))
        self.assertIn('<p class="blob-totals">6 blobs, 294.9\xa0KiB in all</p>', page)
        self.assertLess(page.index("blob-totals"), page.index('id="result_list"'))
        filtered = self.client.get(CHANGELIST, {"q": "logs/"})
        self.assertContains(filtered, "2 blobs, 2\xa0KiB in all")

    def test_one_query_counts_and_adds_up_the_list(self) -> None:
        with CaptureQueriesContext(connection) as queries:
            self.client.get(CHANGELIST, {"q": "logs"})
        counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        self.assertEqual(len(counts), 1, counts)
        self.assertIn("SUM(", counts[0].upper())


class PostgreSQLEstimateTests(TestCase):
    """Big unfiltered tables on PostgreSQL: the planner's estimate, not a COUNT(*)."""

    databases = {"default", "postgres"}
    blobs = Blob.objects.using("postgres").only("id", "key", "size")

    def setUp(self) -> None:
        self.sizes = [index % 50 for index in range(300)]
        for index, size in enumerate(self.sizes):
            store(f"k{index:04}", b"x" * size, using="postgres")
        self.analyze()
        self.enterContext(mock.patch("blobstore.admin.changelist.ESTIMATE_ABOVE", 100))

    def analyze(self) -> None:
        with connections["postgres"].cursor() as cursor:
            cursor.execute("ANALYZE blobstore_blob")

    def test_big_unfiltered_tables_are_estimated_without_counting(self) -> None:
        with CaptureQueriesContext(connections["postgres"]) as queries:
            totals = blob_totals(self.blobs)
        # A table this small is analysed whole, so the estimate is exact here.
        self.assertEqual(totals, Totals(300, sum(self.sizes), estimated=True))
        self.assertEqual(str(totals), "About 300 blobs, about 7.2\xa0KiB in all")
        sql = " ".join(q["sql"] for q in queries).upper()
        self.assertIn("RELTUPLES", sql)
        self.assertNotIn("COUNT(", sql)

    def test_filtered_and_small_lists_are_counted(self) -> None:
        self.assertEqual(
            blob_totals(self.blobs.filter(key__lt="k0010")), Totals(10, sum(self.sizes[:10]))
        )
        with mock.patch("blobstore.admin.changelist.ESTIMATE_ABOVE", 301):
            self.assertEqual(blob_totals(self.blobs), Totals(300, sum(self.sizes)))

    def test_pages_past_the_estimate_still_show_their_blobs(self) -> None:
        for index in range(300, 350):
            store(f"k{index:04}", b"y", using="postgres")
        paginator = BlobPaginator(self.blobs.order_by("key"), 100)
        self.assertEqual((paginator.count, paginator.num_pages), (300, 3))
        self.assertEqual([b.key for b in paginator.page(4)], [f"k{i:04}" for i in range(300, 350)])
        self.assertEqual(list(paginator.page(5)), [])

    def test_page_numbers_past_any_table_are_empty_pages(self) -> None:
        paginator = BlobPaginator(self.blobs.order_by("key"), 100)
        self.assertEqual(list(paginator.page(MAX_ROWS // 100)), [])  # an OFFSET PostgreSQL takes
        for number, error in [
            ("9" * 5000, PageNotAnInteger),
            ("x", PageNotAnInteger),
            ("9" * 4000, EmptyPage),
            (MAX_ROWS // 100 + 1, EmptyPage),
            (0, EmptyPage),
        ]:
            with self.subTest(number=str(number)[:30]), self.assertRaises(error):
                paginator.page(number)

    def test_an_estimate_above_the_real_count_leaves_empty_pages(self) -> None:
        self.blobs.filter(key__gte="k0150").delete()
        paginator = BlobPaginator(self.blobs.order_by("key"), 100)
        self.assertEqual(paginator.num_pages, 3)
        self.assertEqual(len(paginator.page(2)), 50)
        self.assertEqual(list(paginator.page(3)), [])


class ChangePageTests(AdminTestCase):
    def test_metadata_is_read_only_with_a_download_button(self) -> None:
        blob = store("reports/q3.csv", b"a,b\n" * 256)
        page = self.client.get(url("change", blob))
        self.assertContains(page, '<div class="readonly">reports/q3.csv</div>', html=True)
        self.assertContains(page, "1\xa0KiB\xa0(1,024\xa0bytes)")
        self.assertContains(page, blob.sha256)
        self.assertNotContains(page, 'name="key"')
        self.assertContains(page, 'type="file" name="file"')
        self.assertContains(page, f'<a href="{url("download", blob)}" class="blob-download">')

    def test_text_is_previewed_escaped(self) -> None:
        blob = store("page.html", b"<p>hi</p>" + SCRIPT)
        page = self.client.get(url("change", blob))
        self.assertContains(page, "&lt;script&gt;window.pwned=1;alert(1)&lt;/script&gt;")
        self.assertNotContains(page, "<script>window.pwned")
        self.assertContains(page, "All 49\xa0bytes, as UTF-8 text.")

    def test_binary_data_is_previewed_as_a_hex_dump(self) -> None:
        blob = store("bytes.bin", bytes(range(256)) * 4)
        page = self.client.get(url("change", blob))
        self.assertContains(
            page,
            "00000030  30 31 32 33 34 35 36 37  38 39 3a 3b 3c 3d 3e 3f  |0123456789:;&lt;=&gt;?|",
        )
        self.assertNotContains(page, "00000200")  # 512 bytes shown, no more
        self.assertContains(page, "The first 512\xa0bytes of 1\xa0KiB, in hex")

    def test_a_long_text_shows_its_start(self) -> None:
        text = "π" * 10_000  # two bytes each: the preview cuts one in half
        blob = store("pi.txt", text.encode())
        page = self.client.get(url("change", blob))
        self.assertContains(page, "π" * 4096 + "</pre>")
        self.assertContains(page, "The first 8\xa0KiB of 19.5\xa0KiB, as UTF-8 text.")

    def test_an_empty_blob_says_so(self) -> None:
        page = self.client.get(url("change", store("empty", b"")))
        self.assertContains(page, "The blob is empty.")

    def test_images_are_previewed_through_the_image_view(self) -> None:
        image = png(3, 2)
        blob = store("pictures/dot.png", image)
        page = self.client.get(url("change", blob))
        self.assertContains(page, f'<img src="{url("image", blob)}" alt="pictures/dot.png"')
        response = self.client.get(url("image", blob))
        self.assertEqual(response["Content-Type"], "image/png")
        self.assertEqual(
            response["Content-Security-Policy"], "default-src 'none'; img-src 'self'; sandbox"
        )
        self.assertEqual(response["X-Content-Type-Options"], "nosniff")
        self.assertEqual(response["Content-Disposition"], "inline")

    async def test_the_image_view_streams_the_image(self) -> None:
        await self.async_client.aforce_login(self.admin)
        image = png(600, 600) + os.urandom(2 * MIB)  # trailing bytes make it chunked
        await ORMStorage().set("big.png", image)
        blob = await Blob.objects.only("id").aget(key="big.png")
        response = await self.async_client.get(url("image", blob))
        self.assertEqual(response["Content-Length"], str(len(image)))
        self.assertEqual(await body(response), image)

    def test_the_image_view_serves_images_only(self) -> None:
        for data in [SCRIPT, b"<svg onload=alert(1)>", b"GIF8", b""]:
            with self.subTest(data=data):
                response = self.client.get(url("image", store("not-an-image", data)))
                self.assertEqual(response.status_code, 404)

    def test_a_missing_blob_is_not_found(self) -> None:
        blob = store("gone", b"x")
        async_to_sync(ORMStorage().evict)("gone")
        for view in ["download", "image"]:
            with self.subTest(view=view):
                self.assertEqual(self.client.get(url(view, blob)).status_code, 404)


class PreviewTests(TestCase):
    def test_image_types_are_sniffed_from_magic_bytes(self) -> None:
        for head, expected in [
            (png(1, 1), "image/png"),
            (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
            (b"GIF87a\x01\x00", "image/gif"),
            (b"GIF89a\x01\x00", "image/gif"),
            (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
            (b"<svg xmlns='http://www.w3.org/2000/svg'>", None),
            (b"\x89PNG", None),
        ]:
            with self.subTest(head=head):
                self.assertEqual(image_type(head), expected)

    def test_text_is_utf8_without_nul(self) -> None:
        self.assertEqual(as_text("é".encode(), complete=True), "é")
        self.assertEqual(as_text("aé".encode()[:2], complete=False), "a")
        self.assertIsNone(as_text("aé".encode()[:2], complete=True))
        self.assertIsNone(as_text(b"\xff\xfe", complete=True))
        self.assertIsNone(as_text(b"a\x00b", complete=True))

    def test_hex_dump_pads_its_last_line(self) -> None:
        self.assertEqual(
            hex_dump(b"AB\x00\xff"),
            "00000000  41 42 00 ff" + " " * 39 + "|AB..|",
        )


class DownloadTests(AdminTestCase):
    async def test_a_download_is_a_streamed_attachment(self) -> None:
        await self.async_client.aforce_login(self.admin)
        for key, data, disposition in [
            ("notes/today.txt", b"hello", 'attachment; filename="today.txt"'),
            (AWKWARD_KEY, SCRIPT, "attachment; filename*=utf-8''" + quote("naïve 😀.txt")),
            ('say "hi"', b"", 'attachment; filename="say \\"hi\\""'),
            ("big", os.urandom(2 * MIB + 99), 'attachment; filename="big"'),
        ]:
            with self.subTest(key=key):
                await ORMStorage().set(key, data)
                blob = await Blob.objects.only("id").aget(key=key)
                response = await self.async_client.get(url("download", blob))
                self.assertEqual(response["Content-Disposition"], disposition)
                self.assertEqual(response["Content-Type"], "application/octet-stream")
                self.assertEqual(response["Content-Length"], str(len(data)))
                self.assertEqual(response["X-Content-Type-Options"], "nosniff")
                self.assertIn("sandbox", response["Content-Security-Policy"])
                self.assertEqual(await body(response), data)

    async def test_selected_blobs_download_as_a_streamed_zip(self) -> None:
        await self.async_client.aforce_login(self.admin)
        contents = {
            "a/b.txt": b"b" * 1000,
            "../../etc/passwd": b"root",
            "/abs": b"abs",
            "big": os.urandom(MIB + 5),
            "empty": b"",
            AWKWARD_KEY: SCRIPT,
        }
        for key, data in contents.items():
            await ORMStorage().set(key, data)
        await ORMStorage().set("not selected", b"x")
        pks = [
            pk async for pk in Blob.objects.filter(key__in=contents).values_list("pk", flat=True)
        ]
        response = await self.async_client.post(
            CHANGELIST, {"action": "download_zip", "_selected_action": pks}
        )
        self.assertEqual(response["Content-Type"], "application/zip")
        self.assertEqual(response["Content-Disposition"], 'attachment; filename="blobs.zip"')
        archive = zipfile.ZipFile(io.BytesIO(await body(response)))
        self.assertIsNone(archive.testzip())
        expected = dict(zip(zip_entry_names(contents), contents.values(), strict=True))
        self.assertEqual({name: archive.read(name) for name in archive.namelist()}, expected)
        self.assertEqual(
            set(archive.namelist()),
            {"a/b.txt", "_/_/etc/passwd", "_/abs", "big", "empty", AWKWARD_KEY.replace('"', "_")},
        )

    def test_zip_entry_names_stay_inside_the_folder(self) -> None:
        self.assertEqual(
            zip_entry_names(["a/b", "../x", "./y", "/z", "a//b/", "c\\..\\d", "..."]),
            ["a/b", "_/x", "_/y", "_/z", "a/_/b/_", "c/_/d", "_ (2)"],
        )

    def test_zip_entry_names_are_files_of_their_own_on_any_system(self) -> None:
        keys = ["C:/Windows/x", "tab\there", "q?<>|*", "con.txt", "A/B", "a/b", "f", "f/g"]
        keys += ["f.txt", "F.txt", "end. "]
        expected = ["C_/Windows/x", "tab_here", "q_____", "_con.txt", "A/B", "a/b (2)", "f"]
        expected += ["f (2)/g", "f.txt", "F (2).txt", "end"]
        self.assertEqual(zip_entry_names(keys), expected)


class AddAndReplaceTests(AdminTestCase):
    def add(self, file: SimpleUploadedFile, key: str = "", **fields: str) -> Any:
        return self.client.post(ADD, {"file": file, "key": key, **fields})

    def test_the_key_defaults_to_the_file_name(self) -> None:
        response = self.add(upload("notes.txt", b"some notes"))
        self.assertRedirects(response, CHANGELIST)
        self.assertEqual(stored("notes.txt"), b"some notes")

    def test_upload_under_an_awkward_key_round_trips(self) -> None:
        response = self.add(upload("f.txt", b"awkward"), key=AWKWARD_KEY, _continue="1")
        blob = Blob.objects.only("id").get(key=AWKWARD_KEY)
        self.assertRedirects(response, url("change", blob))
        self.assertContains(self.client.get(url("change", blob)), "naïve 😀.txt")
        self.assertEqual(keys(self.client.get(CHANGELIST, {"q": AWKWARD_KEY})), [AWKWARD_KEY])
        self.assertEqual(stored(AWKWARD_KEY), b"awkward")

    def test_a_large_upload_is_stored_in_chunks(self) -> None:
        data = os.urandom(3 * MIB + 7)
        self.add(upload("large.bin", data))
        self.assertEqual(stored("large.bin"), data)
        blob = Blob.objects.only("size", "sha256").get(key="large.bin")
        self.assertEqual((blob.size, blob.sha256), (len(data), hashlib.sha256(data).hexdigest()))

    def test_an_empty_file_makes_an_empty_blob(self) -> None:
        self.add(upload("empty.txt", b""))
        self.assertEqual(stored("empty.txt"), b"")

    def test_an_existing_key_is_replaced_only_when_asked(self) -> None:
        store("taken", b"old data")
        refused = self.add(upload("new.txt", b"new data"), key="taken")
        (warning,) = refused.context["adminform"].form.errors["key"]
        self.assertRegex(
            warning,
            r"^A blob of 8\xa0bytes, updated .+, is already stored under this key\. "
            r"To replace it, tick “Replace an existing blob” and choose the file again\.$",
        )
        self.assertEqual(stored("taken"), b"old data")
        self.add(upload("new.txt", b"new data"), key="taken", overwrite="on")
        self.assertEqual(stored("taken"), b"new data")

    def test_bad_keys_are_form_errors(self) -> None:
        for key in ["a\x00b", "k" * 1025]:
            with self.subTest(key=key[:5]):
                response = self.add(upload("x", b"x"), key=key)
                self.assertEqual(response.status_code, 200)
                self.assertTrue(response.context["adminform"].form.errors["key"])
        self.assertFalse(Blob.objects.exists())

    def test_a_file_is_required(self) -> None:
        response = self.client.post(ADD, {"key": "k"})
        self.assertFormError(response.context["adminform"].form, "file", "This field is required.")

    def test_replace_the_data_on_the_change_page(self) -> None:
        blob = store("doc", b"version 1")
        change = url("change", blob)
        self.client.post(change, {"file": upload("v2.txt", b"version 2")})
        self.assertEqual(stored("doc"), b"version 2")
        self.assertRedirects(self.client.post(change, {}), CHANGELIST)
        self.assertEqual(stored("doc"), b"version 2")
        self.assertEqual(Blob.objects.only("key").get(pk=blob.pk).key, "doc")

    @override_settings(
        BLOBSTORE_STORAGES={
            "default": {
                "BACKEND": "blobstore.storage.ORMStorage",
                "OPTIONS": {"max_object_size": 10},
            }
        }
    )
    def test_uploads_over_the_size_limit_are_refused_and_change_nothing(self) -> None:
        message = (
            "The file has 11\xa0bytes; blobs here may have at most 10\xa0bytes. Raise "
            "BLOBSTORE_STORAGES['default']['OPTIONS']['max_object_size'] (a number of bytes, "
            "or None for no limit) to store larger blobs."
        )
        added = self.add(upload("eleven.txt", b"x" * 11))
        self.assertFormError(added.context["adminform"].form, "file", message)
        self.assertFalse(Blob.objects.exists())
        blob = store("ten", b"y" * 10)
        replaced = self.client.post(url("change", blob), {"file": upload("z", b"z" * 11)})
        self.assertFormError(replaced.context["adminform"].form, "file", message)
        self.assertEqual(stored("ten"), b"y" * 10)
        self.client.post(url("change", blob), {"file": upload("z", b"z" * 10)})
        self.assertEqual(stored("ten"), b"z" * 10)


class DeleteTests(AdminTestCase):
    def test_delete_asks_for_confirmation(self) -> None:
        blob = store("big", os.urandom(MIB + 1))
        self.assertTrue(BlobChunk.objects.exists())
        confirm = self.client.get(url("delete", blob))
        self.assertContains(confirm, "Are you sure you want to delete the blob")
        self.assertContains(confirm, f'Blob: <a href="{url("change", blob)}">big</a>')
        self.assertTrue(Blob.objects.exists())
        self.assertRedirects(self.client.post(url("delete", blob), {"post": "yes"}), CHANGELIST)
        self.assertFalse(Blob.objects.exists())
        self.assertFalse(BlobChunk.objects.exists())

    def delete_selected(self, count: int) -> list[str]:
        pks = [store(f"blob{index}", os.urandom(MIB + index)).pk for index in range(count)]
        confirm = self.client.post(
            CHANGELIST, {"action": "delete_selected", "_selected_action": pks}
        )
        self.assertContains(confirm, "blob0")
        self.assertTrue(BlobChunk.objects.exists())
        with CaptureQueriesContext(connection) as queries:
            self.client.post(
                CHANGELIST, {"action": "delete_selected", "_selected_action": pks, "post": "yes"}
            )
        self.assertFalse(Blob.objects.exists())
        self.assertFalse(BlobChunk.objects.exists())
        return [q["sql"] for q in queries]

    def test_delete_selected_takes_the_same_queries_for_any_number(self) -> None:
        few = self.delete_selected(2)
        many = self.delete_selected(12)
        self.assertEqual(len(few), len(many))
        self.assertEqual(len([sql for sql in many if sql.startswith(BLOB_DELETE)]), 1)


class PermissionTests(TestCase):
    blob: Blob

    @classmethod
    def setUpTestData(cls) -> None:
        cls.blob = store("doc.txt", b"some text")

    def login(self, *codenames: str) -> None:
        self.client.force_login(user_with(*codenames))

    def test_view_permission_browses_and_downloads_but_changes_nothing(self) -> None:
        self.login("view_blob")
        listing = self.client.get(CHANGELIST)
        self.assertEqual(keys(listing), ["doc.txt"])
        self.assertContains(listing, '<option value="download_zip">')
        self.assertNotContains(listing, "delete_selected")
        self.assertNotContains(listing, ADD)
        page = self.client.get(url("change", self.blob))
        self.assertContains(page, "some text")
        self.assertContains(page, "blob-download")
        for control in ['type="file"', 'name="_save"', url("delete", self.blob)]:
            self.assertNotContains(page, control)
        self.assertEqual(self.client.get(url("download", self.blob)).status_code, 200)
        self.assertEqual(self.client.post(url("change", self.blob), {}).status_code, 403)
        self.assertEqual(self.client.get(ADD).status_code, 403)
        self.assertEqual(
            self.client.post(url("delete", self.blob), {"post": "yes"}).status_code, 403
        )
        self.assertEqual(stored("doc.txt"), b"some text")

    def test_without_view_permission_nothing_is_shown(self) -> None:
        self.login()
        for path in [
            CHANGELIST,
            url("change", self.blob),
            url("download", self.blob),
            url("image", self.blob),
        ]:
            with self.subTest(path=path):
                self.assertEqual(self.client.get(path).status_code, 403)

    def test_add_permission_uploads_but_replaces_nothing(self) -> None:
        self.login("add_blob", "view_blob")
        self.client.post(ADD, {"file": upload("new.txt", b"new")})
        self.assertEqual(stored("new.txt"), b"new")
        page = self.client.get(url("change", self.blob))
        self.assertNotContains(page, 'type="file"')

    def test_change_permission_replaces_but_does_not_delete(self) -> None:
        self.login("change_blob")
        self.client.post(url("change", self.blob), {"file": upload("v2", b"v2")})
        self.assertEqual(stored("doc.txt"), b"v2")
        self.assertEqual(
            self.client.post(url("delete", self.blob), {"post": "yes"}).status_code, 403
        )
        self.assertEqual(self.client.get(ADD).status_code, 403)

    def test_delete_permission_deletes(self) -> None:
        self.login("view_blob", "delete_blob")
        self.client.post(url("delete", self.blob), {"post": "yes"})
        self.assertIsNone(stored("doc.txt"))


class HomePageTests(TestCase):
    def test_home_links_the_admin_and_the_api_and_gives_the_demo_login(self) -> None:
        with self.settings(DEBUG=True):
            page = self.client.get("/")
        self.assertContains(page, f'href="{CHANGELIST}"')
        self.assertContains(page, 'href="/admin/"')
        self.assertContains(page, 'href="http://testserver/blobs/"')
        self.assertContains(page, "Log in as <strong>admin</strong> with password")

    def test_without_debug_there_is_no_demo_login_to_give(self) -> None:
        with self.settings(DEBUG=False):
            page = self.client.get("/")
        self.assertNotContains(page, "Log in as")


class EveryPageTests(AdminTestCase):
    """Every admin page of a blob answers: small, chunked, an image, and an awkward key."""

    async def body(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Return the status and the whole body of a GET, streamed or not."""
        response = await self.async_client.get(path, params or {})
        if isinstance(response, StreamingHttpResponse):
            return response.status_code, await body(response)
        return response.status_code, response.content

    async def test_every_page_of_every_blob_answers(self) -> None:
        await self.async_client.aforce_login(self.admin)
        contents = {
            "notes.txt": b"small",
            "big/chunked.bin": os.urandom(MIB + 123),
            "pictures/dot.png": png(2, 2),
            "dir/100%/😀 emoji?#.txt": "ключ".encode(),
        }
        for key, data in contents.items():
            await ORMStorage().set(key, data)
        listing = await self.async_client.get(CHANGELIST)
        cl = listing.context["cl"]
        choices = [
            choice["query_string"] for spec in cl.filter_specs for choice in spec.choices(cl)
        ]
        self.assertIn("?size=1024-1048576", choices)
        self.assertGreaterEqual(len(choices), 10)  # "all" and the ranges of both filters
        for query in choices:
            with self.subTest(query=query):
                self.assertEqual((await self.body(CHANGELIST + query))[0], 200)
        for key, data in contents.items():
            blob = await Blob.objects.only("id", "key").aget(key=key)
            image = 200 if key.endswith(".png") else 404  # the image view serves images only
            for path, params, status in [
                (CHANGELIST, {"q": key}, 200),
                (CHANGELIST, {"q": key, "size": f"{len(data)}-", "o": "-2"}, 200),
                (url("change", blob), {}, 200),
                (url("history", blob), {}, 200),
                (url("delete", blob), {}, 200),
                (url("download", blob), {}, 200),
                (url("image", blob), {}, image),
                (ADD, {}, 200),
                ("/admin/", {}, 200),
                ("/admin/blobstore/", {}, 200),
            ]:
                with self.subTest(key=key, path=path, params=params):
                    self.assertEqual((await self.body(path, params))[0], status)
            self.assertEqual(await self.body(url("download", blob)), (200, data))
            found = await self.async_client.get(CHANGELIST, {"q": key})
            self.assertEqual(keys(found), [key])

    def test_history_lists_what_the_admin_did(self) -> None:
        blob = store("dir/100%/😀 doc", os.urandom(MIB + 1))
        self.client.post(url("change", blob), {"file": upload("v2", os.urandom(MIB + 2))})
        history = self.client.get(url("history", blob))
        self.assertEqual(history.status_code, 200)
        (entry,) = history.context["action_list"]
        self.assertEqual(entry.object_repr, "dir/100%/😀 doc")
        self.assertEqual(self.client.get(url("history", blob), {"p": "2"}).status_code, 200)

    def test_selected_blobs_have_their_pages_too(self) -> None:
        pks = [store(key, data).pk for key, data in [("a", b"a"), ("b", os.urandom(MIB + 1))]]
        for action in ["delete_selected", "download_zip"]:
            with self.subTest(action=action):
                response = self.client.post(CHANGELIST, {"action": action, "_selected_action": pks})
                self.assertEqual(response.status_code, 200)


HUGE = "9" * 5000
"""More digits than int() takes from a str (4,300)."""
BIG = "9" * 4000
"""Fewer digits than that, but more than any database integer holds."""


class BadNumberTests(AdminTestCase):
    """Numbers in the admin's URLs, of any length or none, are never a 500."""

    blob: Blob

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.blob = store("k", b"x" * 10)
        for index in range(3):
            store(f"k{index}", b"y" * index)

    def assert_refused(self, params: dict[str, str]) -> None:
        response = self.client.get(CHANGELIST, params)
        self.assertRedirects(response, f"{CHANGELIST}?e=1", fetch_redirect_response=False)

    def test_sizes_of_any_length_are_refused_or_bounded(self) -> None:
        for size in [f"{HUGE}-", f"1-{HUGE}", f"{BIG}-", f"0-{BIG}", "1" * 21 + "-"]:
            with self.subTest(size=size[:30]):
                self.assert_refused({"size": size})
        # Twenty digits are taken, as the largest size there can be.
        self.assertEqual(keys(self.client.get(CHANGELIST, {"size": "9" * 20 + "-"})), [])
        everything = keys(self.client.get(CHANGELIST, {"size": "0-" + "9" * 20}))
        self.assertEqual(everything, ["k", "k0", "k1", "k2"])

    def test_page_numbers_of_any_length_are_refused_or_bounded(self) -> None:
        admin = django_admin.site._registry[Blob]
        self.enterContext(mock.patch.object(admin, "list_per_page", 2))
        for page in [HUGE, "abc", "", "1.5", "²"]:
            with self.subTest(page=page[:30]):
                # Django's changelist takes a page that is not a number for the first.
                self.assertEqual(keys(self.client.get(CHANGELIST, {"p": page})), ["k", "k0"])
        for page in [BIG, "0", "-1", "3", str(2**63)]:
            with self.subTest(page=page[:30]):
                self.assert_refused({"p": page})
        self.assertEqual(keys(self.client.get(CHANGELIST, {"p": "2"})), ["k1", "k2"])

    def test_other_numbers_in_the_changelist(self) -> None:
        for params in [
            {"o": HUGE},
            {"o": f"-{BIG}.{HUGE}"},
            {"o": "2.x.-"},
            {"all": HUGE},
            {"e": HUGE},
        ]:
            with self.subTest(params={k: v[:30] for k, v in params.items()}):
                self.assertEqual(self.client.get(CHANGELIST, params).status_code, 200)
        for params in [
            {"updated__gte": HUGE},
            {"updated__gte": "garbage"},
            {"updated__lt": BIG},
            {"updated__gte": "9999-99-99"},
        ]:
            with self.subTest(params={k: v[:30] for k, v in params.items()}):
                self.assert_refused(params)

    def test_history_page_numbers(self) -> None:
        for page in [HUGE, BIG, "abc", "-1", "0"]:
            with self.subTest(page=page[:30]):
                response = self.client.get(url("history", self.blob), {"p": page})
                self.assertEqual(response.status_code, 200)

    def test_object_ids_of_any_length(self) -> None:
        for object_id in [HUGE, BIG, str(2**63), "-1", "abc", "1.5"]:
            for view, status in [
                ("change", 302),  # Django's "no such blob" message on the admin's home
                ("history", 302),
                ("delete", 302),
                ("download", 404),
                ("image", 404),
            ]:
                with self.subTest(object_id=object_id[:30], view=view):
                    path = reverse(f"admin:blobstore_blob_{view}", args=[object_id])
                    self.assertEqual(self.client.get(path).status_code, status)
        self.assertEqual(stored("k"), b"x" * 10)


class KeyFormErrorTests(AdminTestCase):
    """The upload form says which part of the key rule a key breaks."""

    def form_errors(self, key: str) -> list[str]:
        response = self.client.post(ADD, {"file": upload("file.bin", b"data"), "key": key})
        self.assertEqual(response.status_code, 200)
        errors: list[str] = response.context["adminform"].form.errors["key"]
        return errors

    def test_each_broken_rule_has_its_message(self) -> None:
        for key, message in [
            ("a\nb", "The key holds the control character U+000A (character 2); keys may not."),
            ("\x7f", "The key holds the control character U+007F (character 1); keys may not."),
            (
                "tab\there",
                "The key holds the control character U+0009 (character 4); keys may not.",
            ),
            ("a\x00", "Null characters are not allowed."),
            ("é" * 513, "The key has 1,026 bytes in UTF-8; keys may have at most 1,024."),
            ("x" * 1021 + "😀", "The key has 1,025 bytes in UTF-8; keys may have at most 1,024."),
            ("x" * 1025, "Ensure this value has at most 1024 characters (it has 1025)."),
        ]:
            with self.subTest(key=key[:10]):
                self.assertEqual(self.form_errors(key), [message])
        self.assertFalse(Blob.objects.exists())

    def test_a_lone_surrogate_is_refused_by_the_form(self) -> None:
        file: UploadedFile[bytes] = upload("file.bin", b"data")
        files = MultiValueDict({"file": [file]})
        form = BlobAddForm({"key": "a\ud800"}, files, instance=Blob())
        self.assertFormError(
            form, "key", "The key holds U+D800 (character 2), a lone surrogate, which is not text."
        )
        self.assertEqual(key_error("").messages, ["Enter a key, or choose a file that has a name."])

    def test_keys_at_the_limit_are_taken(self) -> None:
        for key in ["😀" * 256, "x" * 1024, "漢" * 341 + "a", "\x80\x9f\u2028 C1 and separators"]:
            with self.subTest(key=key[:10]):
                response = self.client.post(ADD, {"file": upload("f", key.encode()), "key": key})
                self.assertRedirects(response, CHANGELIST)
                self.assertEqual(stored(key), key.encode())
