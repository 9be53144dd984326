"""Messages say what to do: sizes in MiB, the setting that lifts a limit, JSON that ends a line."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from unittest import mock

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.test import SimpleTestCase, TestCase, override_settings

from blobstore import signing
from blobstore.api.faults import BUSY, FULL, UNREACHABLE
from blobstore.api.responses import error, json_response
from blobstore.models import APIToken
from blobstore.sizes import format_size
from blobstore.storage import DictStorage, storages
from tests.test_asgi import ShortPathTestCase

SMALL = {
    "default": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {"max_object_size": 10}},
    "ps": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {"max_object_size": 2048}},
}
TOKENS = "/admin/blobstore/apitoken/"


class FormatSizeTests(SimpleTestCase):
    def test_binary_units_with_one_decimal_at_most(self) -> None:
        for size, text in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (70, "70 bytes"),
            (1023, "1023 bytes"),
            (1024, "1 KiB"),
            (12 * 1024, "12 KiB"),
            (1536 * 1024, "1.5 MiB"),
            (1024 * 1024 - 1, "1 MiB"),  # 1023.999 KiB rounds up to the next unit
            (100 * 1024 * 1024, "100 MiB"),
            (3 * 1024**4, "3 TiB"),
        ]:
            with self.subTest(size=size):
                self.assertEqual(format_size(size), text)

    def test_exact_adds_the_bytes_past_one_kib(self) -> None:
        self.assertEqual(format_size(70, exact=True), "70 bytes")
        self.assertEqual(format_size(1536 * 1024, exact=True), "1.5 MiB (1,572,864 bytes)")


class JSONBodyTests(SimpleTestCase):
    def test_every_json_helper_ends_its_body_with_a_newline(self) -> None:
        responses = [
            json_response({"a": 1}),
            error(404, "gone"),
            error(401, "who"),
            BUSY.response(),
            UNREACHABLE.response(),
            FULL.response(),
        ]
        for response in responses:
            with self.subTest(status=response.status_code):
                self.assertTrue(response.content.endswith(b"}\n"), response.content)
                self.assertFalse(response.content.endswith(b"\n\n"))
        self.assertEqual(BUSY.response()["Retry-After"], "1")
        self.assertIn("Retry-After", BUSY.message)


@override_settings(BLOBSTORE_STORAGES=SMALL, BLOBSTORE_PROXYSTORE={"STORAGE": "ps"})
class RouteMessageTests(ShortPathTestCase):
    """Through blobstore.asgi, as uvicorn would send them."""

    def setUp(self) -> None:
        super().setUp()
        storages.reset()
        self.addCleanup(storages.reset)
        async_to_sync(storages["default"].set)("k", b"0123456789")

    async def test_every_json_body_ends_with_a_newline(self) -> None:
        signed = signing.signed_url("k")
        requests = [
            ("GET", "/blobs/", {}, None, 200),
            ("PUT", "/blobs/new", {}, b"new", 201),
            ("GET", "/blobs/missing", {}, None, 404),
            ("POST", "/blobs/k", {}, None, 405),
            ("GET", "/blobs/k", {"Authorization": "Bearer nope"}, None, 401),
            ("GET", "/blobs/k", {"Authorization": "Basic x"}, None, 401),
            ("GET", signed.replace("signature=", "signature=x"), {}, None, 403),
            ("GET", "/blobs/k", {"Range": "bytes=x-"}, None, 416),
            ("PUT", "/blobs/big", {}, b"x" * 11, 413),
            ("GET", "/blobs/?limit=0", {}, None, 400),
            ("GET", "/endpoint", {}, None, 200),
            ("GET", "/exists?key=k", {}, None, 200),
            ("GET", "/exists", {}, None, 400),
            ("GET", "/get?key=nope", {}, None, 404),
            ("GET", "/set?key=k", {}, None, 405),
            ("GET", "/endpoint", {"Origin": "https://evil.example"}, None, 403),
        ]
        async with self.http() as http:
            for method, path, headers, body, status in requests:
                with self.subTest(method=method, path=path):
                    response = await http.request(method, path, headers=headers, content=body)
                    self.assertEqual(response.status_code, status, response.text)
                    self.assertEqual(response.headers["Content-Type"], "application/json")
                    self.assertTrue(response.content.endswith(b"}\n"), response.content)
                    self.assertEqual(response.headers["Content-Length"], str(len(response.content)))
        async with self.http("rebind.example") as http:
            refused = await http.get("/blobs/")
        self.assertEqual(refused.status_code, 400)
        self.assertTrue(refused.content.endswith(b"}\n"))
        self.assertIn("ALLOWED_HOSTS", refused.json()["error"])

    async def test_413_says_the_limit_and_the_setting_that_raises_it(self) -> None:
        fix = (
            "Raise BLOBSTORE_STORAGES[{!r}]['OPTIONS']['max_object_size'] (a number of bytes, "
            "or None for no limit) to store larger blobs."
        )

        async def chunked(size: int) -> AsyncIterator[bytes]:
            yield b"x" * size

        async with self.http() as http:
            declared = await http.put("/blobs/big", content=b"x" * 11)
            streamed = await http.put("/blobs/big", content=chunked(11))
            proxystore = await http.post("/set?key=big", content=b"x" * 2049)
        for response in (declared, streamed):
            self.assertEqual(response.status_code, 413)
            self.assertEqual(
                response.json()["error"],
                "The body is larger than the limit of 10 bytes; nothing was stored. "
                + fix.format("default"),
            )
        self.assertEqual(proxystore.status_code, 413)
        self.assertEqual(
            proxystore.json()["error"],
            "The body is larger than the limit of 2 KiB; nothing was stored. " + fix.format("ps"),
        )

    async def test_a_malformed_range_is_called_malformed(self) -> None:
        async with self.http() as http:
            for header in ["bytes=x-", "bytes=-", "bytes=5", "bytes=5-2", "bytes=1-a"]:
                with self.subTest(header=header):
                    response = await http.get("/blobs/k", headers={"Range": header})
                    self.assertEqual(response.status_code, 416)
                    self.assertEqual(response.headers["Content-Range"], "bytes */10")
                    self.assertEqual(
                        response.json()["error"],
                        f"The Range header {header!r} is malformed; ask for one range of bytes "
                        "such as 'bytes=0-99', 'bytes=100-' or 'bytes=-100' (the last 100).",
                    )

    async def test_an_unsatisfiable_range_says_what_the_blob_has(self) -> None:
        store = storages["default"]
        assert isinstance(store, DictStorage)
        await store.set("empty", b"")
        async with self.http() as http:
            past = await http.get("/blobs/k", headers={"Range": "bytes=10-"})
            none = await http.get("/blobs/k", headers={"Range": "bytes=-0"})
            empty = await http.get("/blobs/empty", headers={"Range": "bytes=0-"})
        for response in (past, none):
            self.assertEqual(response.status_code, 416)
            self.assertRegex(
                response.json()["error"],
                r"^The range '.+' is not within the blob's 10 bytes; it has bytes 0 to 9\.$",
            )
        self.assertEqual(
            empty.json()["error"],
            "The range 'bytes=0-' is not within the blob's 0 bytes; it has none: the blob is "
            "empty.",
        )

    async def test_refusals_name_the_way_out(self) -> None:
        async with self.http() as http:
            revoked = await http.get("/blobs/k", headers={"Authorization": "Bearer nope"})
            method = await http.post("/blobs/k")
            cursor = await http.get("/blobs/?cursor=***")
        self.assertIn("manage.py blobstore token USERNAME", revoked.json()["error"])
        self.assertEqual(
            method.json()["error"],
            "Method POST is not allowed here; use GET, HEAD, PUT, DELETE, OPTIONS.",
        )
        self.assertIn("or none for the first page", cursor.json()["error"])
        with override_settings(BLOBSTORE_PROXYSTORE={"ALLOWED_CLIENTS": ["10.0.0.0/8"]}):
            async with self.http() as http:
                outsider = await http.get("/endpoint")
        self.assertEqual(outsider.status_code, 403)
        self.assertIn("BLOBSTORE_PROXYSTORE['ALLOWED_CLIENTS']", outsider.json()["error"])


class TokenAdminMessageTests(TestCase):
    def setUp(self) -> None:
        self.admin = User.objects.create_superuser("admin", password="pw")
        self.client.force_login(self.admin)

    def test_the_created_page_names_the_token_by_its_prefix(self) -> None:
        named = self.client.post(f"{TOKENS}add/", {"user": self.admin.pk, "name": "laptop"})
        token = APIToken.objects.get(name="laptop")
        self.assertContains(named, f"Created the API token {token.hint}… (“laptop”) for admin.")
        unnamed = self.client.post(f"{TOKENS}add/", {"user": self.admin.pk, "name": ""})
        other = APIToken.objects.get(name="")
        self.assertContains(unnamed, f"Created the API token {other.hint}… for admin.")
        self.assertNotContains(unnamed, "“”")

    def test_revoking_names_the_tokens_and_counts_them_in_words(self) -> None:
        one, _ = APIToken.objects.create_token(self.admin, "one")
        two, _ = APIToken.objects.create_token(self.admin, "two")
        three, _ = APIToken.objects.create_token(self.admin, "three")

        def revoke(*tokens: APIToken) -> list[str]:
            selected = [token.pk for token in tokens]
            response = self.client.post(
                TOKENS, {"action": "revoke", "_selected_action": selected}, follow=True
            )
            return [str(message) for message in get_messages(response.wsgi_request)]

        self.assertEqual(
            revoke(one),
            [f"Revoked the token {one.hint}…: programs that send it are refused from now on."],
        )
        hints = ", ".join(f"{hint}…" for hint in sorted([two.hint, three.hint]))
        self.assertEqual(
            revoke(one, two, three),
            [f"Revoked 2 tokens, {hints}: programs that send them are refused from now on."],
        )
        self.assertEqual(revoke(one), ["The selected tokens were revoked already."])

    def test_the_status_filter_reads_active_and_revoked(self) -> None:
        active, _ = APIToken.objects.create_token(self.admin, "active")
        gone, _ = APIToken.objects.create_token(self.admin, "gone")
        APIToken.objects.filter(pk=gone.pk).update(revoked=gone.created)
        page = self.client.get(TOKENS)
        self.assertContains(page, "By status")
        self.assertContains(page, "?status=active")
        self.assertContains(page, "?status=revoked")
        self.assertNotContains(page, "Not empty")
        for status, expected in [("active", active), ("revoked", gone)]:
            with self.subTest(status=status):
                listed = self.client.get(TOKENS, {"status": status})
                self.assertEqual(list(listed.context["cl"].result_list), [expected])


class DemoTests(TestCase):
    def test_the_home_page_shows_the_command_through_the_venv(self) -> None:
        page = self.client.get("/")
        self.assertContains(
            page, "<code>.venv/bin/python manage.py blobstore token USERNAME</code>"
        )
        self.assertNotContains(page, "./manage.py")

    def test_rundemo_says_what_it_did_in_a_few_lines(self) -> None:
        out = io.StringIO()
        with (
            override_settings(DEBUG=True),
            mock.patch("project.management.commands.rundemo.uvicorn.run") as run,
        ):
            call_command("rundemo", "--port", "8123", stdout=out)
        run.assert_called_once()
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "Created the demo superuser 'admin'.",
                "Demo site: http://127.0.0.1:8123/  (log in as 'admin' with password 'admin'; "
                "Ctrl+C stops it)",
            ],
        )
