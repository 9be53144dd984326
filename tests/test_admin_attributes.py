"""The blob admin's attributes (content type, metadata, expiry) and its folders."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from blobstore.models import Blob
from blobstore.storage import ORMStorage
from tests.test_admin import ADD, CHANGELIST, AdminTestCase, keys, store, stored, url


def info(key: str) -> tuple[str, dict[str, str], datetime.datetime | None]:
    record = async_to_sync(ORMStorage().stat)(key)
    assert record is not None
    return record.content_type, dict(record.metadata), record.expires


def later(days: int = 3) -> datetime.datetime:
    return (timezone.now() + datetime.timedelta(days=days)).replace(microsecond=0)


class AttributeAdminTests(AdminTestCase):
    def change(self, blob: Blob, **fields: str) -> Any:
        return self.client.post(url("change", blob), fields)

    def test_the_change_page_shows_the_attributes(self) -> None:
        async_to_sync(ORMStorage().write)(
            "doc", _once(b"x"), content_type="text/plain", metadata={"author": "Ada"}
        )
        page = self.client.get(url("change", Blob.objects.get(key="doc")))
        self.assertContains(page, 'value="text/plain"')
        self.assertContains(page, "author")
        self.assertContains(page, "Ada")

    def test_attributes_change_without_touching_the_data(self) -> None:
        blob = store("doc", b"data")
        expires = later()
        response = self.change(
            blob,
            content_type="text/csv",
            metadata='{"owner": "ops"}',
            expires_0=expires.strftime("%Y-%m-%d"),
            expires_1=expires.strftime("%H:%M:%S"),
        )
        self.assertEqual(response.status_code, 302)
        content_type, metadata, stored_expires = info("doc")
        self.assertEqual((content_type, metadata), ("text/csv", {"owner": "ops"}))
        self.assertEqual(stored_expires, expires)
        self.assertEqual(stored("doc"), b"data")

    def test_bad_attributes_are_form_errors_that_change_nothing(self) -> None:
        blob = store("doc", b"data")
        past = timezone.now() - datetime.timedelta(days=1)
        for fields in [
            {"content_type": "not a type"},
            {"metadata": '{"bad name": "x"}'},
            {"metadata": '{"n": "' + "x" * 3000 + '"}'},
            {"metadata": "[1, 2]"},
            {"expires_0": past.strftime("%Y-%m-%d"), "expires_1": past.strftime("%H:%M:%S")},
        ]:
            with self.subTest(fields=list(fields)):
                response = self.change(blob, **{"metadata": "{}", **fields})
                self.assertEqual(response.status_code, 200)  # the form again, with its errors
                self.assertTrue(response.context["adminform"].form.errors)
                self.assertEqual(info("doc"), ("application/octet-stream", {}, None))

    def test_a_replacement_upload_takes_the_attributes_of_the_form(self) -> None:
        blob = store("doc", b"old")
        upload = SimpleUploadedFile("new.png", b"new", content_type="image/png")
        response = self.client.post(
            url("change", blob),
            {"file": upload, "content_type": "image/png", "metadata": '{"v": "2"}'},
        )
        self.assertEqual(response.status_code, 302)
        self.assertEqual(stored("doc"), b"new")
        self.assertEqual(info("doc")[:2], ("image/png", {"v": "2"}))

    def test_adding_takes_the_browsers_type_unless_one_is_given(self) -> None:
        for key, given, expected in [
            ("a.png", "", "image/png"),
            ("b.png", "application/x-custom", "application/x-custom"),
        ]:
            with self.subTest(key=key):
                upload = SimpleUploadedFile(key, b"\x89PNG", content_type="image/png")
                response = self.client.post(
                    ADD, {"file": upload, "key": key, "content_type": given, "metadata": "{}"}
                )
                self.assertEqual(response.status_code, 302)
                self.assertEqual(info(key)[0], expected)


class FolderAdminTests(AdminTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        for key in ["top", "docs/a", "docs/b/1", "docs/b/2", "docs/é/x", "docsish"]:
            store(key, b"x")

    def test_the_top_folder_lists_its_sub_folders(self) -> None:
        response = self.client.get(CHANGELIST)
        self.assertContains(response, "?folder=docs%2F")
        self.assertEqual(len(keys(response)), 6)  # no folder chosen: every blob

    def test_a_folder_shows_its_own_blobs_sub_folders_and_breadcrumbs(self) -> None:
        response = self.client.get(CHANGELIST, {"folder": "docs/"})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(keys(response), ["docs/a"])
        self.assertContains(response, "?folder=docs%2Fb%2F")
        self.assertContains(response, "?folder=docs%2F%C3%A9%2F")
        self.assertContains(response, '<a href="?">All folders</a> &rsaquo; <strong>docs</strong>')

    def test_a_nested_folder(self) -> None:
        response = self.client.get(CHANGELIST, {"folder": "docs/b/"})
        self.assertEqual(keys(response), ["docs/b/1", "docs/b/2"])
        self.assertContains(
            response, '<a href="?folder=docs%2F">docs</a> &rsaquo; <strong>b</strong>'
        )

    def test_a_value_that_is_no_folder_is_refused_as_django_refuses_bad_filters(self) -> None:
        for value in ["docs", "do\ncs/", "x\x00/"]:
            with self.subTest(value=value):
                response = self.client.get(CHANGELIST, {"folder": value})
                self.assertEqual(response.status_code, 302)
                self.assertIn("e=1", response["Location"])


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
