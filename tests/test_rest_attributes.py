"""Content types, metadata, expiry and folders over the REST API."""

from __future__ import annotations

import datetime
import hashlib
import time
from typing import Any

from django.http import HttpResponse
from django.test import SimpleTestCase, override_settings
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import http_date

from blobstore.api.checks import check_inline_types
from blobstore.api.responses import PASSIVE_TYPES, json_response, keep_out_of_shared_caches
from blobstore.storage import storages
from tests.test_api import POSTGRES_STORAGE, APITestCase
from tests.test_attributes import later, soon

PNG = b"\x89PNG\r\n\x1a\n" + bytes(24)


class AttributeRouteTests(APITestCase):
    async def put_typed(self, key: str, body: bytes, content_type: str, **headers: str) -> Any:
        return await self.async_client.put(
            f"/blobs/{key}", body, content_type=content_type, headers={**self.auth(), **headers}
        )

    async def test_put_keeps_type_metadata_and_expiry_and_get_answers_them(self) -> None:
        expires = http_date(time.time() + 3600)
        created = await self.put_typed(
            "notes/a.txt",
            b"hello",
            "text/plain; charset=utf-8",
            **{"X-Blobstore-Meta-Author": "Ada", "X-Blobstore-Meta-Draft": "yes"},
            **{"X-Blobstore-Expires": expires},
        )
        self.assertEqual(created.status_code, 201)
        self.assertEqual(created.json()["content_type"], "text/plain; charset=utf-8")
        self.assertEqual(created.json()["metadata"], {"author": "Ada", "draft": "yes"})
        for method in (self.async_client.get, self.async_client.head):
            response = await method("/blobs/notes/a.txt", headers=self.auth())
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response["Content-Type"], "text/plain; charset=utf-8")
            self.assertEqual(response["X-Blobstore-Meta-Author"], "Ada")
            self.assertEqual(response["X-Blobstore-Meta-Draft"], "yes")
            self.assertEqual(response["X-Blobstore-Expires"], expires)
            self.assertTrue(response["Content-Disposition"].startswith("attachment"))

    async def test_a_put_without_a_type_is_octet_stream(self) -> None:
        await self.async_client.put("/blobs/raw", b"x", headers=self.auth())
        response = await self.get("/blobs/raw")
        self.assertEqual(response["Content-Type"], "application/octet-stream")

    async def test_a_type_a_browser_could_run_is_always_a_sandboxed_attachment(self) -> None:
        for content_type in ("text/html", "image/svg+xml", "application/javascript", "x/unknown"):
            with self.subTest(content_type=content_type):
                await self.put_typed("page", b"<script>alert(1)</script>", content_type)
                with override_settings(BLOBSTORE_INLINE_TYPES=sorted(PASSIVE_TYPES)):
                    response = await self.get("/blobs/page")
                self.assertEqual(response["Content-Type"], content_type)
                self.assertEqual(response["Content-Disposition"], 'attachment; filename="page"')
                self.assertEqual(response["X-Content-Type-Options"], "nosniff")
                self.assertIn("sandbox", response["Content-Security-Policy"])

    async def test_passive_types_are_inline_only_where_the_site_opens_them(self) -> None:
        await self.put_typed("img/cat.png", PNG, "image/png")
        closed = await self.get("/blobs/img/cat.png")
        self.assertEqual(closed["Content-Disposition"], 'attachment; filename="cat.png"')
        with override_settings(BLOBSTORE_INLINE_TYPES=["image/png"]):
            opened = await self.get("/blobs/img/cat.png")
        self.assertEqual(opened["Content-Disposition"], 'inline; filename="cat.png"')
        self.assertEqual(opened["Content-Type"], "image/png")
        self.assertIn("sandbox", opened["Content-Security-Policy"])
        self.assertEqual(opened.content, PNG)

    async def test_bad_attribute_headers_are_400_and_store_nothing(self) -> None:
        await self.put("kept", b"old")
        cases: list[tuple[str, dict[str, str]]] = [
            ("text", {}),
            ("a/" + "b" * 300, {}),
            ("text/plain", {"X-Blobstore-Meta-Big": "x" * 3000}),
            ("text/plain", {"X-Blobstore-Meta-Bad": "tab\there"}),
            ("text/plain", {"X-Blobstore-Expires": "tomorrow"}),
            ("text/plain", {"X-Blobstore-Expires": "9" * 5000}),
            ("text/plain", {"X-Blobstore-Expires": http_date(time.time() - 60)}),
        ]
        for content_type, headers in cases:
            with self.subTest(content_type=content_type[:20], headers=list(headers)):
                for key in ("kept", "new"):
                    response = await self.put_typed(key, b"new", content_type, **headers)
                    self.assertEqual(response.status_code, 400, response.content)
                    self.assertIn("error", response.json())
        self.assertEqual(await self.contents(), {"kept": b"old"})

    async def test_an_expired_blob_is_absent_at_once(self) -> None:
        expires = http_date(soon().timestamp())
        await self.put_typed("brief", b"x", "text/plain", **{"X-Blobstore-Expires": expires})
        self.assertEqual((await self.get("/blobs/brief")).status_code, 200)
        with later():
            self.assertEqual((await self.get("/blobs/brief")).status_code, 404)
            self.assertEqual((await self.get("/blobs/")).json()["blobs"], [])

    async def test_listing_describes_each_blob(self) -> None:
        await self.put_typed("a", b"x", "image/png", **{"X-Blobstore-Meta-Size": "small"})
        [blob] = (await self.get("/blobs/")).json()["blobs"]
        self.assertEqual(blob["content_type"], "image/png")
        self.assertEqual(blob["metadata"], {"size": "small"})
        self.assertIsNone(blob["expires"])


class FolderRouteTests(APITestCase):
    KEYS = [
        "docs/a.txt",
        "docs/b/1",
        "docs/b/2",
        "docs/c//d",
        "docs/é/ü",
        "docs/z.txt",
        "docs/😀/x",
        "docsish",
        "top",
    ]

    async def listing(self, query: str) -> Any:
        if not await storages["default"].exists(self.KEYS[0]):
            # Through the storage: Django's test client decodes paths as ISO-8859-1.
            for key in self.KEYS:
                await storages["default"].set(key, b"x")
        response = await self.get(f"/blobs/?{query}")
        self.assertEqual(response.status_code, 200, response.content)
        return response.json()

    async def test_keys_directly_under_a_prefix_and_its_sub_prefixes(self) -> None:
        page = await self.listing("prefix=docs/&delimiter=/")
        self.assertEqual([blob["key"] for blob in page["blobs"]], ["docs/a.txt", "docs/z.txt"])
        self.assertEqual(page["prefixes"], ["docs/b/", "docs/c/", "docs/é/", "docs/😀/"])
        self.assertIsNone(page["cursor"])
        root = await self.listing("delimiter=/")
        self.assertEqual([blob["key"] for blob in root["blobs"]], ["docsish", "top"])
        self.assertEqual(root["prefixes"], ["docs/"])

    async def test_pages_of_a_folder_join_up(self) -> None:
        entries: list[str] = []
        cursor = ""
        for _ in range(10):
            page = await self.listing(f"prefix=docs/&delimiter=/&limit=2&cursor={cursor}")
            entries += [blob["key"] for blob in page["blobs"]] + page["prefixes"]
            if page["cursor"] is None:
                break
            cursor = page["cursor"]
        self.assertEqual(
            sorted(entries),
            sorted(["docs/a.txt", "docs/b/", "docs/c/", "docs/é/", "docs/z.txt", "docs/😀/"]),
        )

    async def test_a_bad_delimiter_is_400(self) -> None:
        for delimiter in ("", "x" * 17, "%0A"):
            with self.subTest(delimiter=delimiter):
                response = await self.get(f"/blobs/?delimiter={delimiter}")
                self.assertEqual(response.status_code, 400)
                self.assertIn("delimiter", response.json()["error"])


@override_settings(BLOBSTORE_STORAGES=POSTGRES_STORAGE)
class FolderRoutePostgreSQLTests(FolderRouteTests):
    databases = {"default", "postgres"}


class InlineTypesCheckTests(SimpleTestCase):
    def test_only_passive_types_may_be_served_inline(self) -> None:
        for setting in (["text/html"], "image/png", ["image/png", 3]):
            with self.subTest(setting=setting), override_settings(BLOBSTORE_INLINE_TYPES=setting):
                [error] = check_inline_types()
                self.assertEqual(error.id, "blobstore.E009")
                self.assertIn(repr(setting), error.msg)
        with override_settings(BLOBSTORE_INLINE_TYPES=["image/png", "text/plain"]):
            self.assertEqual(check_inline_types(), [])


class PrivateCachingTests(SimpleTestCase):
    def test_headers_are_what_djangos_patching_writes(self) -> None:
        for headers in ({}, {"Cache-Control": "max-age=60"}, {"Vary": "Accept-Encoding"}):
            with self.subTest(headers=headers):
                ours, djangos = HttpResponse(headers=headers), HttpResponse(headers=headers)
                keep_out_of_shared_caches(ours)
                patch_cache_control(djangos, private=True, no_cache=True)
                patch_vary_headers(djangos, ("Authorization", "Cookie"))
                self.assertEqual(
                    {name: ours.get(name) for name in ("Cache-Control", "Vary")},
                    {name: djangos.get(name) for name in ("Cache-Control", "Vary")},
                )

    def test_json_is_encoded_as_djangos_encoder_does(self) -> None:
        moment = datetime.datetime(2026, 12, 7, 23, 0, tzinfo=datetime.UTC)
        response = json_response({"when": moment, "name": "caf\u00e9"}, status=201)
        self.assertEqual(response.status_code, 201)
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertEqual(
            response.content, b'{"when": "2026-12-07T23:00:00Z", "name": "caf\\u00e9"}\n'
        )


class HTTPDetailTests(APITestCase):
    async def test_authenticated_answers_stay_out_of_shared_caches(self) -> None:
        await self.put("k", b"0123456789")
        for path in ("/blobs/k", "/blobs/"):
            response = await self.get(path)
            self.assertEqual(response["Cache-Control"], "private, no-cache")
            self.assertIn("Authorization", response["Vary"])
        revalidated = await self.get("/blobs/k", **{"If-None-Match": response_etag(b"0123456789")})
        self.assertEqual(revalidated.status_code, 304)

    async def test_json_answers_are_never_sniffed(self) -> None:
        for response in (await self.get("/blobs/"), await self.get("/blobs/missing")):
            self.assertEqual(response["X-Content-Type-Options"], "nosniff")

    async def test_range_unit_is_case_insensitive(self) -> None:
        await self.put("k", b"0123456789")
        response = await self.get("/blobs/k", Range="Bytes=2-4")
        self.assertEqual((response.status_code, response.content), (206, b"234"))

    async def test_if_range_serves_the_range_only_for_the_same_version(self) -> None:
        await self.put("k", b"0123456789")
        same = await self.get(
            "/blobs/k", Range="bytes=2-4", **{"If-Range": response_etag(b"0123456789")}
        )
        self.assertEqual((same.status_code, same.content), (206, b"234"))
        await self.put("k", b"abcdefghij")
        other = await self.get(
            "/blobs/k", Range="bytes=2-4", **{"If-Range": response_etag(b"0123456789")}
        )
        self.assertEqual((other.status_code, other.content), (200, b"abcdefghij"))


def response_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'
