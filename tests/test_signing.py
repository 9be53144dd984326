"""Signed URLs: one method on one key until they expire, refused with 403 otherwise."""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlencode, urlsplit

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import SimpleTestCase, TestCase, override_settings

from blobstore import signing
from blobstore.storage import storages

DICT = {"default": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {}}}


def with_query(url: str, **changes: str) -> str:
    """Return url with some of its query parameters changed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


@override_settings(BLOBSTORE_STORAGES=DICT)
class SignedURLTests(TestCase):
    def setUp(self) -> None:
        storages.reset()
        self.store: Any = storages["default"]
        async_to_sync(self.store.set)("docs/a b.txt", b"secret")

    def blobs(self) -> dict[str, bytes]:
        infos = async_to_sync(self.store.list_blobs)()
        return {info.key: async_to_sync(self.store.get)(info.key) for info in infos}

    def assert_refused(self, response: Any, reason: str) -> None:
        self.assertEqual(response.status_code, 403)
        self.assertIn(reason, json.loads(response.content)["error"])

    def test_a_get_url_reads_without_credentials(self) -> None:
        url = signing.signed_url("docs/a b.txt")
        self.assertTrue(url.startswith("/blobs/docs/a%20b.txt?method=GET&expires="))
        response = self.client.get(url)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"secret")
        self.assertEqual(self.client.head(url).status_code, 200)

    def test_a_get_url_grants_nothing_else(self) -> None:
        url = signing.signed_url("docs/a b.txt")
        self.assert_refused(self.client.put(url, b"changed"), "grants GET only, not PUT")
        self.assert_refused(self.client.delete(url), "grants GET only, not DELETE")
        self.assertEqual(self.blobs(), {"docs/a b.txt": b"secret"})

    def test_a_put_url_uploads_and_grants_nothing_else(self) -> None:
        url = signing.signed_url("uploads/new.bin", method="PUT", expires=60)
        response = self.client.put(url, b"uploaded", content_type="application/octet-stream")
        self.assertEqual(response.status_code, 201)
        self.assertEqual(self.blobs()["uploads/new.bin"], b"uploaded")
        self.assert_refused(self.client.get(url), "grants PUT only, not GET")

    def test_another_key_is_refused(self) -> None:
        url = signing.signed_url("docs/a b.txt")
        other = url.replace("/blobs/docs/a%20b.txt", "/blobs/docs/other.txt")
        self.assert_refused(self.client.get(other), "does not match")
        put = signing.signed_url("uploads/new.bin", method="PUT")
        moved = put.replace("uploads/new.bin", "docs/a%20b.txt")
        self.assert_refused(self.client.put(moved, b"overwritten"), "does not match")
        self.assertEqual(self.blobs(), {"docs/a b.txt": b"secret"})

    def test_tampering_is_refused(self) -> None:
        url = signing.signed_url("uploads/x", method="PUT")
        expires = dict(parse_qsl(urlsplit(url).query))["expires"]
        for changes in (
            {"method": "GET"},
            {"expires": str(int(expires) + 3600)},
            {"signature": "A" * 43},
            {"signature": ""},
            {"expires": "soon"},
        ):
            with self.subTest(changes=changes):
                self.assertEqual(self.client.put(with_query(url, **changes), b"x").status_code, 403)
        for name in signing.PARAMETERS:
            parts = urlsplit(url)
            query = {k: v for k, v in parse_qsl(parts.query) if k != name}
            response = self.client.put(f"{parts.path}?{urlencode(query)}", b"x")
            self.assert_refused(response, "needs method, expires and signature")
        self.assertEqual(self.blobs(), {"docs/a b.txt": b"secret"})

    def test_an_expired_url_is_refused(self) -> None:
        url = signing.signed_url("docs/a b.txt", expires=5)
        with mock.patch("time.time", return_value=time.time() + 6):
            self.assert_refused(self.client.get(url), "has expired")
        put = signing.signed_url("docs/a b.txt", method="PUT", expires=1)
        with mock.patch("time.time", return_value=time.time() + 2):
            self.assert_refused(self.client.put(put, b"late"), "has expired")
        self.assertEqual(self.blobs(), {"docs/a b.txt": b"secret"})

    def test_another_secret_key_is_refused_and_fallbacks_are_honoured(self) -> None:
        url = signing.signed_url("docs/a b.txt")
        with override_settings(SECRET_KEY="another-key-entirely-for-this-test"):
            self.assert_refused(self.client.get(url), "does not match")
        old_key = self.settings_key()
        with override_settings(
            SECRET_KEY="rotated-key-for-this-test", SECRET_KEY_FALLBACKS=[old_key]
        ):
            self.assertEqual(self.client.get(url).status_code, 200)

    def settings_key(self) -> str:
        from django.conf import settings

        return str(settings.SECRET_KEY)

    def test_a_signature_overrides_a_session_and_never_reaches_the_list(self) -> None:
        User.objects.create_superuser("admin", password="pw")
        self.client.login(username="admin", password="pw")
        url = signing.signed_url("docs/a b.txt")
        self.assert_refused(self.client.get(with_query(url, signature="x" * 43)), "does not match")
        query = urlsplit(url).query
        self.assert_refused(self.client.get(f"/blobs/?{query}"), "one blob, not to the list")
        self.assertEqual(self.client.get(url.split("?")[0]).status_code, 200)

    def test_without_a_signature_the_usual_rules_hold(self) -> None:
        self.assertEqual(self.client.get("/blobs/docs/a%20b.txt").status_code, 401)

    def test_bad_arguments(self) -> None:
        for options in ({"method": "DELETE"}, {"expires": 0}, {"expires": -5}):
            with self.subTest(options=options), self.assertRaises(ValueError):
                signing.signed_url("k", **options)
        with self.assertRaises(ValueError):
            signing.signed_url("bad\nkey")


@override_settings(BLOBSTORE_STORAGES=DICT)
class URLCommandTests(SimpleTestCase):
    def url(self, *arguments: str) -> str:
        out = StringIO()
        call_command("blobstore", "url", *arguments, stdout=out)
        return out.getvalue().strip()

    def test_prints_a_signed_url(self) -> None:
        before = int(time.time())
        url = self.url("a/b.txt", "--expires", "120", "--method", "PUT", "--base-url", "https://x/")
        parts = urlsplit(url)
        self.assertEqual((parts.scheme, parts.netloc, parts.path), ("https", "x", "/blobs/a/b.txt"))
        query = dict(parse_qsl(parts.query))
        self.assertEqual(query["method"], "PUT")
        self.assertIn(int(query["expires"]) - before, (120, 121))
        signing.check(query, "a/b.txt", "PUT")

    def test_bad_input(self) -> None:
        with self.assertRaisesMessage(CommandError, "positive number of seconds"):
            self.url("k", "--expires", "0")
        with self.assertRaises(CommandError):
            self.url("k", "--method", "DELETE")
        with self.assertRaises(CommandError):
            self.url("")
