"""The HTTP API through Django's AsyncClient: every route, status and header."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import tempfile
import time
import warnings
from collections.abc import Mapping
from io import StringIO
from typing import Any
from unittest import mock
from urllib.parse import quote, unquote

from django.conf import settings
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory, SimpleTestCase, TestCase, override_settings
from django.utils import timezone

from blobstore.api.auth import MODEL_BACKEND
from blobstore.api.responses import (
    EXPIRES_HEADER,
    LARGE_BODY,
    APIError,
    RequestBody,
    _slots,
    request_body,
)
from blobstore.asgi import get_asgi_application
from blobstore.contrib.proxystore import endpoint_uuid
from blobstore.models import APIToken, BlobChunk
from blobstore.storage import storages

POSTGRES_STORAGE = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"using": "postgres"}}
}
HUGE = "9" * 5000
"""A number past Python's int-string limit (4,300 digits): int() of it raises ValueError."""
DICT_STORAGE = {"default": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {}}}
SMALL_STORAGE = {
    "default": {"BACKEND": "blobstore.storage.DictStorage", "OPTIONS": {"max_object_size": 10}}
}
OCTETS = "application/octet-stream"


class LetsEveryoneView(BaseBackend):
    """A site's own backend: every active user may view blobs."""

    def get_user_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        return {"blobstore.view_blob"} if user_obj.is_active else set()


def make_user(username: str, *permissions: str, is_active: bool = True) -> User:
    user = User.objects.create_user(username, password="pw", is_active=is_active)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    return user


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


class APITestCase(TestCase):
    """Users with each permission, a token for each, and helpers to call the API."""

    users: dict[str, User]
    secrets: dict[str, str]
    revoked_secret: str

    @classmethod
    def setUpTestData(cls) -> None:
        users = {
            "admin": User.objects.create_superuser("admin", password="pw"),
            "viewer": make_user("viewer", "view_blob"),
            "writer": make_user("writer", "view_blob", "add_blob", "change_blob"),
            "deleter": make_user("deleter", "delete_blob"),
            "inactive": make_user("inactive", "view_blob", is_active=False),
            "nobody": make_user("nobody"),
        }
        cls.users = users
        cls.secrets = {name: APIToken.objects.create_token(user)[1] for name, user in users.items()}
        revoked, cls.revoked_secret = APIToken.objects.create_token(users["admin"], "old")
        revoked.revoked = timezone.now()
        revoked.save()

    def auth(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[user]}"}

    def raw_auth(self) -> list[tuple[bytes, bytes]]:
        """Return the admin's credentials as ASGI headers."""
        return [(b"authorization", self.auth()["Authorization"].encode())]

    async def put(self, key: str, body: bytes, user: str = "admin", **headers: str) -> Any:
        return await self.async_client.put(
            f"/blobs/{key}", body, content_type=OCTETS, headers={**self.auth(user), **headers}
        )

    async def get(self, path: str, user: str | None = "admin", **headers: str) -> Any:
        credentials = self.auth(user) if user else {}
        return await self.async_client.get(path, headers={**credentials, **headers})

    async def contents(self) -> dict[str, bytes | None]:
        store = storages["default"]
        infos = await store.list_blobs(limit=1000)  # type: ignore[attr-defined]
        return {info.key: await store.get(info.key) for info in infos}


class BlobRouteTests(APITestCase):
    async def test_put_creates_then_replaces(self) -> None:
        created = await self.put("doc.txt", b"hello")
        self.assertEqual(created.status_code, 201)
        self.assertEqual(created["ETag"], etag(b"hello"))
        self.assertEqual(created.json()["size"], 5)
        self.assertEqual(created.json()["sha256"], hashlib.sha256(b"hello").hexdigest())
        replaced = await self.put("doc.txt", b"bye")
        self.assertEqual(replaced.status_code, 200)
        self.assertEqual(await self.contents(), {"doc.txt": b"bye"})

    def test_without_use_tz_put_creates_then_replaces_and_keeps_its_expiry(self) -> None:
        expires = "Wed, 21 Oct 2099 07:28:00 GMT"
        headers = {**self.auth(), EXPIRES_HEADER: expires}
        # Changed on the thread of the database connections, which Django then
        # sets to the new time zone (an async test changes its loop's thread).
        with override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris"):
            responses = [
                self.client.put("/blobs/later", body, content_type=OCTETS, headers=headers)
                for body in (b"x", b"y")
            ]
            read = self.client.get("/blobs/later", headers=self.auth())
        self.assertEqual([response.status_code for response in responses], [201, 200])
        self.assertEqual((read.status_code, read[EXPIRES_HEADER]), (200, expires))

    async def test_of_clients_creating_one_key_at_once_one_hears_201(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            sqlite = {
                "BACKEND": "blobstore.storage.SQLiteStorage",
                "OPTIONS": {"database_path": f"{folder}/blobs.sqlite3"},
            }
            for name, backend in (
                ("orm", None),
                ("dict", DICT_STORAGE["default"]),
                ("sqlite", sqlite),
            ):
                with (
                    self.subTest(name),
                    self.settings(
                        BLOBSTORE_STORAGES={"default": backend}
                        if backend
                        else settings.BLOBSTORE_STORAGES
                    ),
                ):
                    answers = await asyncio.gather(
                        *(self.put(f"{name}/new", bytes([n]) * 100) for n in range(8))
                    )
                    statuses = sorted(response.status_code for response in answers)
                    self.assertEqual(statuses, [200] * 7 + [201])
                    await storages["default"].close()

    async def test_get_serves_bytes_that_cannot_run_as_a_page(self) -> None:
        await self.put("dir/page.html", b"<script>alert(1)</script>")
        response = await self.get("/blobs/dir/page.html")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"<script>alert(1)</script>")
        self.assertEqual(response["Content-Type"], OCTETS)
        self.assertEqual(response["X-Content-Type-Options"], "nosniff")
        self.assertEqual(response["Content-Disposition"], 'attachment; filename="page.html"')
        self.assertIn("sandbox", response["Content-Security-Policy"])
        self.assertEqual(response["Content-Length"], "25")
        self.assertEqual(response["ETag"], etag(b"<script>alert(1)</script>"))
        self.assertEqual(response["Accept-Ranges"], "bytes")
        self.assertIn("GMT", response["Last-Modified"])

    async def test_keys_with_slashes_spaces_and_percent_round_trip(self) -> None:
        keys = ["a/b/c", "with space", "100%", "a%2Fb", "trailing/"]
        for key in keys:
            self.assertEqual((await self.put(quote(key), key.encode())).status_code, 201)
        for key in keys:
            self.assertEqual((await self.get(f"/blobs/{quote(key)}")).content, key.encode())
        self.assertEqual(await self.contents(), {key: key.encode() for key in keys})

    async def test_empty_blob(self) -> None:
        await self.put("empty", b"")
        response = await self.get("/blobs/empty")
        self.assertEqual((response.status_code, response.content), (200, b""))
        self.assertEqual(response["Content-Length"], "0")

    async def test_head_gives_headers_only(self) -> None:
        await self.put("k", b"0123456789")
        response = await self.async_client.head("/blobs/k", headers=self.auth())
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"")
        self.assertEqual(response["Content-Length"], "10")
        self.assertEqual(response["ETag"], etag(b"0123456789"))
        absent = await self.async_client.head("/blobs/absent", headers=self.auth())
        self.assertEqual(absent.status_code, 404)

    async def test_missing_blob_is_a_json_404(self) -> None:
        response = await self.get("/blobs/absent")
        self.assertEqual(response.status_code, 404)
        self.assertIn("absent", response.json()["error"])

    async def test_if_none_match_gives_304(self) -> None:
        await self.put("k", b"data")
        response = await self.get("/blobs/k", **{"If-None-Match": etag(b"data")})
        self.assertEqual(response.status_code, 304)
        self.assertEqual(response["ETag"], etag(b"data"))
        other = await self.get("/blobs/k", **{"If-None-Match": etag(b"other")})
        self.assertEqual((other.status_code, other.content), (200, b"data"))

    async def test_ranges(self) -> None:
        await self.put("k", b"0123456789")
        cases = {
            "bytes=0-4": (b"01234", "bytes 0-4/10"),
            "bytes=5-": (b"56789", "bytes 5-9/10"),
            "bytes=-3": (b"789", "bytes 7-9/10"),
            "bytes=8-100": (b"89", "bytes 8-9/10"),
            "bytes=-50": (b"0123456789", "bytes 0-9/10"),
        }
        for header, (body, content_range) in cases.items():
            with self.subTest(header):
                response = await self.get("/blobs/k", Range=header)
                self.assertEqual(response.status_code, 206)
                self.assertEqual(response.content, body)
                self.assertEqual(response["Content-Range"], content_range)
                self.assertEqual(response["Content-Length"], str(len(body)))

    async def test_ranges_the_server_may_ignore(self) -> None:
        await self.put("k", b"0123456789")
        for header in ("bytes=0-1,4-5", "items=0-1"):
            with self.subTest(header):
                response = await self.get("/blobs/k", Range=header)
                self.assertEqual((response.status_code, response.content), (200, b"0123456789"))

    async def test_unsatisfiable_range_is_416(self) -> None:
        await self.put("k", b"0123456789")
        response = await self.get("/blobs/k", Range="bytes=10-")
        self.assertEqual(response.status_code, 416)
        self.assertEqual(response["Content-Range"], "bytes */10")

    async def test_create_only_put(self) -> None:
        first = await self.put("k", b"one", **{"If-None-Match": "*"})
        second = await self.put("k", b"two", **{"If-None-Match": "*"})
        self.assertEqual((first.status_code, second.status_code), (201, 412))
        self.assertEqual(await self.contents(), {"k": b"one"})

    async def test_if_match_put(self) -> None:
        await self.put("k", b"one")
        stale = await self.put("k", b"two", **{"If-Match": etag(b"other")})
        self.assertEqual(stale.status_code, 412)
        fresh = await self.put("k", b"two", **{"If-Match": etag(b"one")})
        self.assertEqual(fresh.status_code, 200)
        anything = await self.put("k", b"three", **{"If-Match": "*"})
        self.assertEqual(anything.status_code, 200)
        self.assertEqual(await self.contents(), {"k": b"three"})

    async def test_delete(self) -> None:
        await self.put("k", b"x")
        response = await self.async_client.delete("/blobs/k", headers=self.auth())
        self.assertEqual(response.status_code, 204)
        again = await self.async_client.delete("/blobs/k", headers=self.auth())
        self.assertEqual(again.status_code, 204)
        self.assertEqual(await self.contents(), {})

    @override_settings(BLOBSTORE_STORAGES=SMALL_STORAGE)
    async def test_body_over_the_limit_is_413_and_stores_nothing(self) -> None:
        self.assertEqual((await self.put("fits", b"0123456789")).status_code, 201)
        response = await self.put("big", b"0123456789A")
        self.assertEqual(response.status_code, 413)
        self.assertIn("10 bytes", response.json()["error"])
        self.assertEqual(await self.contents(), {"fits": b"0123456789"})

    @override_settings(BLOBSTORE_STORAGES=DICT_STORAGE)
    async def test_any_configured_backend_serves_the_api(self) -> None:
        await self.put("k", b"in a dict")
        self.assertEqual((await self.get("/blobs/k")).content, b"in a dict")


class ListRouteTests(APITestCase):
    async def test_lists_in_key_order_with_metadata(self) -> None:
        for key in ["b", "a/2", "a/1", "c"]:
            await self.put(key, key.encode())
        listing = (await self.get("/blobs/")).json()
        self.assertEqual([blob["key"] for blob in listing["blobs"]], ["a/1", "a/2", "b", "c"])
        first = listing["blobs"][0]
        self.assertEqual((first["size"], first["sha256"]), (3, hashlib.sha256(b"a/1").hexdigest()))
        self.assertIn("T", first["updated"])
        self.assertIsNone(listing["cursor"])

    async def test_prefix_and_pages(self) -> None:
        keys = [f"p/{n:02}" for n in range(7)]
        for key in [*keys, "other"]:
            await self.put(key, b"x")
        seen: list[str] = []
        cursor = ""
        while True:
            page = (await self.get(f"/blobs/?prefix=p/&limit=3&cursor={cursor}")).json()
            seen += [blob["key"] for blob in page["blobs"]]
            if page["cursor"] is None:
                break
            cursor = page["cursor"]
        self.assertEqual(seen, keys)


class AccessTests(APITestCase):
    async def test_anonymous_is_401_with_a_challenge(self) -> None:
        response = await self.get("/blobs/", user=None)
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response["WWW-Authenticate"], 'Bearer realm="blobstore"')

    async def test_permissions_decide_each_method(self) -> None:
        await self.put("k", b"x")
        cases = [
            ("viewer", "GET", 200),
            ("viewer", "PUT", 403),
            ("viewer", "DELETE", 403),
            ("writer", "PUT", 200),
            ("writer", "DELETE", 403),
            ("deleter", "GET", 403),
            ("deleter", "DELETE", 204),
            ("nobody", "GET", 403),
        ]
        for user, method, status in cases:
            with self.subTest(user=user, method=method):
                response = await self.async_client.generic(
                    method, "/blobs/k", b"y" if method == "PUT" else b"", headers=self.auth(user)
                )
                self.assertEqual(response.status_code, status)

    async def test_a_group_grants_its_members_its_permissions_while_it_has_them(self) -> None:
        await self.put("k", b"x")
        self.assertEqual((await self.get("/blobs/k", user="nobody")).status_code, 403)
        readers = await Group.objects.acreate(name="readers")
        await readers.permissions.aadd(await Permission.objects.aget(codename="view_blob"))
        await self.users["nobody"].groups.aadd(readers)
        self.assertEqual((await self.get("/blobs/k", user="nobody")).status_code, 200)
        await readers.permissions.aclear()
        self.assertEqual((await self.get("/blobs/k", user="nobody")).status_code, 403)

    async def test_a_permission_taken_away_refuses_the_next_request(self) -> None:
        await self.put("k", b"x")
        self.assertEqual((await self.get("/blobs/k", user="viewer")).status_code, 200)
        await self.users["viewer"].user_permissions.aclear()
        self.assertEqual((await self.get("/blobs/k", user="viewer")).status_code, 403)

    @override_settings(AUTHENTICATION_BACKENDS=[MODEL_BACKEND, "tests.test_api.LetsEveryoneView"])
    async def test_every_authentication_backend_of_the_site_is_asked(self) -> None:
        await self.put("k", b"x")
        self.assertEqual((await self.get("/blobs/k", user="nobody")).status_code, 200)
        self.assertEqual((await self.put("k", b"y", user="nobody")).status_code, 403)

    async def test_a_user_model_that_decides_permissions_its_own_way_is_asked(self) -> None:
        await self.put("k", b"x")

        async def refuses(user: User, perm: str, obj: Any = None) -> bool:
            return False

        with mock.patch.object(User, "ahas_perm", refuses):
            self.assertEqual((await self.get("/blobs/k", user="viewer")).status_code, 403)
        self.assertEqual((await self.get("/blobs/k", user="viewer")).status_code, 200)

    async def test_session_user_needs_csrf_for_unsafe_methods(self) -> None:
        client = self.async_client_class(enforce_csrf_checks=True)
        await client.aforce_login(self.users["writer"])
        refused = await client.put("/blobs/k", b"x", content_type=OCTETS)
        self.assertEqual(refused.status_code, 403)
        self.assertIn("CSRF", refused.json()["error"])
        await client.get("/admin/login/")  # sets the CSRF cookie
        token = client.cookies["csrftoken"].value
        accepted = await client.put(
            "/blobs/k", b"x", content_type=OCTETS, headers={"X-CSRFToken": token}
        )
        self.assertEqual(accepted.status_code, 201)
        self.assertEqual((await client.get("/blobs/k")).content, b"x")

    @override_settings(BLOBSTORE_ANONYMOUS_ACCESS="read")
    async def test_anonymous_read_access(self) -> None:
        await self.put("k", b"x")
        self.assertEqual((await self.get("/blobs/k", user=None)).status_code, 200)
        anonymous_put = await self.async_client.put("/blobs/k", b"y", content_type=OCTETS)
        self.assertEqual(anonymous_put.status_code, 401)

    @override_settings(BLOBSTORE_ANONYMOUS_ACCESS="write")
    async def test_anonymous_write_access(self) -> None:
        response = await self.async_client.put("/blobs/k", b"y", content_type=OCTETS)
        self.assertEqual(response.status_code, 201)

    async def test_token_secret_is_stored_only_as_a_digest(self) -> None:
        secret = self.secrets["admin"]
        stored = await APIToken.objects.filter(user__username="admin", revoked=None).afirst()
        assert stored is not None
        self.assertEqual(stored.digest, hashlib.sha256(secret.encode()).hexdigest())
        self.assertTrue(secret.startswith("bs_"))
        self.assertFalse(await APIToken.objects.filter(digest=secret).aexists())


class ProxyStoreRouteTests(APITestCase):
    async def call(self, method: str, route: str, body: bytes = b"", **params: str) -> Any:
        query = "&".join(f"{name}={quote(value)}" for name, value in params.items())
        return await self.async_client.generic(method, f"/{route}?{query}", body)

    async def test_endpoint_names_its_uuid(self) -> None:
        response = await self.call("GET", "endpoint")
        self.assertEqual(response.json(), {"uuid": str(endpoint_uuid())})

    async def test_set_exists_get_evict(self) -> None:
        self.assertEqual((await self.call("POST", "set", b"payload", key="k")).status_code, 200)
        self.assertEqual((await self.call("GET", "exists", key="k")).json(), {"exists": True})
        got = await self.call("GET", "get", key="k", endpoint=str(endpoint_uuid()))
        self.assertEqual((got.status_code, got.content), (200, b"payload"))
        self.assertEqual((await self.call("POST", "evict", key="k")).status_code, 200)
        self.assertEqual((await self.call("GET", "exists", key="k")).json(), {"exists": False})
        self.assertEqual((await self.call("GET", "get", key="k")).status_code, 404)

    @override_settings(BLOBSTORE_PROXYSTORE={"UUID": "5a0a4b5e-8d6a-4b8e-9d3c-2f1e0c9b8a70"})
    async def test_configured_uuid(self) -> None:
        response = await self.call("GET", "endpoint")
        self.assertEqual(response.json(), {"uuid": "5a0a4b5e-8d6a-4b8e-9d3c-2f1e0c9b8a70"})

    @override_settings(BLOBSTORE_PROXYSTORE={"ALLOWED_CLIENTS": ["10.0.0.0/8"]})
    async def test_other_clients_are_refused(self) -> None:
        response = await self.call("POST", "set", b"x", key="k")
        self.assertEqual(response.status_code, 403)
        self.assertEqual(await self.contents(), {})


def _bad_requests() -> list[tuple[str, str, str, dict[str, str], bytes, int]]:
    """(what, method, path, headers, body, status): malformed requests, with the user admin."""
    too_long = "x" * 1025
    not_utf8 = base64.urlsafe_b64encode(b"\xff\xfe").decode()
    return [
        ("too long key, PUT", "PUT", f"/blobs/{too_long}", {}, b"x", 400),
        ("too long key, GET", "GET", f"/blobs/{too_long}", {}, b"", 400),
        ("too long key, HEAD", "HEAD", f"/blobs/{too_long}", {}, b"", 400),
        ("too long key, DELETE", "DELETE", f"/blobs/{too_long}", {}, b"", 400),
        ("NUL in key, PUT", "PUT", "/blobs/a%00b", {}, b"x", 400),
        ("NUL in key, GET", "GET", "/blobs/a%00b", {}, b"", 400),
        ("NUL in key, DELETE", "DELETE", "/blobs/a%00b", {}, b"", 400),
        ("POST a blob", "POST", "/blobs/k", {}, b"x", 405),
        ("PATCH a blob", "PATCH", "/blobs/k", {}, b"x", 405),
        ("PUT the list", "PUT", "/blobs/", {}, b"x", 405),
        ("DELETE the list", "DELETE", "/blobs/", {}, b"", 405),
        ("limit zero", "GET", "/blobs/?limit=0", {}, b"", 400),
        ("limit text", "GET", "/blobs/?limit=ten", {}, b"", 400),
        ("limit too big", "GET", "/blobs/?limit=1001", {}, b"", 400),
        ("limit negative", "GET", "/blobs/?limit=-5", {}, b"", 400),
        ("limit superscript", "GET", "/blobs/?limit=%C2%B2", {}, b"", 400),
        ("cursor not base64", "GET", "/blobs/?cursor=%21%21%21", {}, b"", 400),
        ("cursor not UTF-8", "GET", f"/blobs/?cursor={not_utf8}", {}, b"", 400),
        ("range past the end", "GET", "/blobs/existing", {"Range": "bytes=100-200"}, b"", 416),
        ("range backwards", "GET", "/blobs/existing", {"Range": "bytes=5-2"}, b"", 416),
        ("range not numbers", "GET", "/blobs/existing", {"Range": "bytes=a-b"}, b"", 416),
        ("range empty", "GET", "/blobs/existing", {"Range": "bytes=-"}, b"", 416),
        ("range of no bytes", "GET", "/blobs/existing", {"Range": "bytes=-0"}, b"", 416),
        ("GET If-Match stale", "GET", "/blobs/existing", {"If-Match": '"stale"'}, b"", 412),
        ("PUT create-only", "PUT", "/blobs/existing", {"If-None-Match": "*"}, b"new", 412),
        ("PUT If-Match stale", "PUT", "/blobs/existing", {"If-Match": '"stale"'}, b"new", 412),
        ("PUT If-Match absent", "PUT", "/blobs/absent", {"If-Match": "*"}, b"new", 412),
        ("PUT If-None-Match tag", "PUT", "/blobs/absent", {"If-None-Match": '"x"'}, b"new", 400),
        ("Basic credentials", "GET", "/blobs/", {"Authorization": "Basic YTpi"}, b"", 401),
        ("Bearer no token", "GET", "/blobs/", {"Authorization": "Bearer "}, b"", 401),
        ("unknown token", "PUT", "/blobs/k", {"Authorization": "Bearer bs_nope"}, b"x", 401),
        ("proxystore get no key", "GET", "/get", {}, b"", 400),
        ("proxystore set by GET", "GET", "/set?key=k", {}, b"", 405),
        ("proxystore get by POST", "POST", "/get?key=k", {}, b"x", 405),
        ("proxystore bad endpoint", "GET", "/exists?key=k&endpoint=nope", {}, b"", 400),
        ("proxystore too long key", "POST", f"/set?key={too_long}", {}, b"x", 400),
    ]


class BadRequestTests(APITestCase):
    async def test_each_malformed_request_gets_its_4xx_and_changes_nothing(self) -> None:
        await self.put("existing", b"0123456789")
        before = await self.contents()
        for what, method, path, headers, body, status in _bad_requests():
            with self.subTest(what):
                response = await self.async_client.generic(
                    method, path, body, content_type=OCTETS, headers={**self.auth(), **headers}
                )
                self.assertEqual(response.status_code, status)
                if method != "HEAD":
                    self.assertIn("error", response.json())
        self.assertEqual(await self.contents(), before)

    async def test_there_are_at_least_thirty(self) -> None:
        self.assertGreaterEqual(len(_bad_requests()), 30)

    async def test_refused_credentials_change_nothing(self) -> None:
        await self.put("existing", b"kept")
        revoked = {"Authorization": f"Bearer {self.revoked_secret}"}
        inactive = {"Authorization": f"Bearer {self.secrets['inactive']}"}
        for headers, status in ((revoked, 401), (inactive, 401), ({}, 401)):
            for method in ("PUT", "DELETE"):
                with self.subTest(headers=headers, method=method):
                    response = await self.async_client.generic(
                        method, "/blobs/existing", b"new", content_type=OCTETS, headers=headers
                    )
                    self.assertEqual(response.status_code, status)
        self.assertEqual(await self.contents(), {"existing": b"kept"})


class TokenCommandTests(TestCase):
    def test_token_command_prints_a_working_secret_once(self) -> None:
        User.objects.create_user("robot")
        out, err = StringIO(), StringIO()
        call_command("blobstore", "token", "robot", "--name", "ci", stdout=out, stderr=err)
        secret = out.getvalue().strip()
        token = APIToken.objects.get(user__username="robot")
        self.assertEqual(token.name, "ci")
        self.assertEqual(token.digest, hashlib.sha256(secret.encode()).hexdigest())
        self.assertIn("shown once", err.getvalue())

    def test_token_command_names_a_missing_user(self) -> None:
        with self.assertRaisesMessage(CommandError, "'ghost'"):
            call_command("blobstore", "token", "ghost")


class TokenAdminTests(TestCase):
    def setUp(self) -> None:
        self.admin = User.objects.create_superuser("admin", password="pw")
        self.client.force_login(self.admin)

    def test_adding_a_token_shows_its_secret_once(self) -> None:
        response = self.client.post(
            "/admin/blobstore/apitoken/add/", {"user": self.admin.pk, "name": "laptop"}
        )
        self.assertEqual(response.status_code, 200)  # the page itself, not a redirect
        secret = response.context["secret"]
        self.assertContains(response, '<code class="token-secret"')
        self.assertIn("no-store", response["Cache-Control"])
        token = APIToken.objects.get(name="laptop")
        self.assertEqual(token.digest, hashlib.sha256(secret.encode()).hexdigest())
        # Not in a message, so in no cookie or session either.
        self.assertEqual(list(get_messages(response.wsgi_request)), [])
        self.assertNotIn(secret, str(response.cookies))
        listing = self.client.get("/admin/blobstore/apitoken/")
        self.assertNotContains(listing, secret)

    def test_revoke_action(self) -> None:
        token, _ = APIToken.objects.create_token(self.admin, "old")
        self.client.post(
            "/admin/blobstore/apitoken/",
            {"action": "revoke", "_selected_action": [token.pk]},
        )
        token.refresh_from_db()
        self.assertIsNotNone(token.revoked)


def _hostile_requests() -> list[tuple[str, str, str, dict[str, str], int]]:
    """(what, method, path, headers, status): numbers too long to convert, controls in text."""
    nul_cursor = base64.urlsafe_b64encode(b"a\x00b").decode().rstrip("=")
    tab_cursor = base64.urlsafe_b64encode(b"a\tb").decode().rstrip("=")
    return [
        ("limit of 5,000 digits", "GET", f"/blobs/?limit={HUGE}", {}, 400),
        ("limit of 5,000 zeros", "GET", f"/blobs/?limit={'0' * 5000}", {}, 400),
        ("limit of 5,000 digits, negative", "GET", f"/blobs/?limit=-{HUGE}", {}, 400),
        ("range start of 5,000 digits", "GET", "/blobs/existing", {"Range": f"bytes={HUGE}-"}, 416),
        (
            "range of two 5,000 digits",
            "GET",
            "/blobs/existing",
            {"Range": f"bytes={HUGE}-{HUGE}"},
            416,
        ),
        (
            "range start past a huge end",
            "GET",
            "/blobs/existing",
            {"Range": f"bytes=5-{'0' * 5000}"},
            416,
        ),
        ("NUL in prefix", "GET", "/blobs/?prefix=a%00b", {}, 400),
        ("tab in prefix", "GET", "/blobs/?prefix=a%09", {}, 400),
        ("DEL in prefix", "GET", "/blobs/?prefix=%7F", {}, 400),
        ("NUL in cursor", "GET", f"/blobs/?cursor={nul_cursor}", {}, 400),
        ("tab in cursor", "GET", f"/blobs/?cursor={tab_cursor}", {}, 400),
        ("cursor of 5,000 characters", "GET", f"/blobs/?cursor={HUGE}", {}, 400),
        ("proxystore endpoint of 5,000 digits", "GET", f"/exists?key=k&endpoint={HUGE}", {}, 400),
    ]


class HostileInputTests(APITestCase):
    """Numbers of 5,000 digits and control characters: a 4xx JSON error, never a 500."""

    async def assert_refused_and_unchanged(self) -> None:
        await self.put("existing", b"0123456789")
        before = await self.contents()
        for what, method, path, headers, status in _hostile_requests():
            with self.subTest(what):
                response = await self.async_client.generic(
                    method, path, headers={**self.auth(), **headers}
                )
                self.assertEqual(response.status_code, status, response.content[:200])
                self.assertIn("error", response.json())
                self.assertLess(len(response.json()["error"]), 200)  # not the 5,000 digits
        self.assertEqual(await self.contents(), before)

    async def test_refused_with_4xx_and_nothing_changed(self) -> None:
        await self.assert_refused_and_unchanged()

    async def test_ranges_past_the_end_are_the_rest_of_the_blob(self) -> None:
        # RFC 9110 §14.1.2: a last position past the end, or a suffix longer
        # than the blob, means the rest of it; no digit of them is converted.
        await self.put("k", b"0123456789")
        for start, header in (
            (0, f"bytes=0-{HUGE}"),
            (0, f"bytes=-{HUGE}"),
            (3, f"bytes=3-{HUGE}"),
        ):
            with self.subTest(header[:10]):
                response = await self.get("/blobs/k", Range=header)
                self.assertEqual(response.status_code, 206)
                self.assertEqual(response.content, b"0123456789"[start:])
                self.assertEqual(response["Content-Range"], f"bytes {start}-9/10")

    async def test_limit_with_leading_zeros_is_its_number(self) -> None:
        await self.put("a", b"1")
        await self.put("b", b"2")
        page = await self.get(f"/blobs/?limit={'0' * 5000}1")
        self.assertEqual([blob["key"] for blob in page.json()["blobs"]], ["a"])

    async def test_content_length_of_5000_digits_is_413(self) -> None:
        await self.put("existing", b"kept")
        for method, path in (("PUT", "/blobs/existing"), ("POST", "/set?key=existing")):
            with self.subTest(method):
                status, _, body = await asgi_call(
                    method, path, [(b"content-length", HUGE.encode()), *self.raw_auth()], [b"x"]
                )
                self.assertEqual(status, 413)
                self.assertIn("larger", json.loads(body)["error"])
        self.assertEqual(await self.contents(), {"existing": b"kept"})

    async def test_content_length_not_a_number_is_400(self) -> None:
        for value in ("12a", "-1", "\u00b2", "1e9", ""):
            with self.subTest(value):
                status, _, body = await asgi_call(
                    "PUT", "/blobs/k", [(b"content-length", value.encode()), *self.raw_auth()], []
                )
                self.assertEqual(status, 400)
                self.assertIn("Content-Length", json.loads(body)["error"])
        self.assertEqual(await self.contents(), {})


@override_settings(BLOBSTORE_STORAGES=POSTGRES_STORAGE)
class HostileInputPostgreSQLTests(HostileInputTests):
    """The same on PostgreSQL, which refuses NUL in text with an error of its own."""

    databases = {"default", "postgres"}


class SlowBodyTests(APITestCase):
    """A body that stops arriving, on the short path, ends with 408 and stores nothing."""

    @override_settings(BLOBSTORE_BODY_TIMEOUT=0.3)
    async def test_stalled_and_trickling_bodies_are_408(self) -> None:
        await self.put("kept", b"old")
        first = b"x" * (1536 * 1024)  # a chunk row written, then nothing more
        trickle = [first, *[b"y"] * 20]
        for what, chunks, delay in (("stall", [first], 0.0), ("trickle", trickle, 0.05)):
            for path in ("/blobs/kept", "/set?key=kept"):
                with self.subTest(what=what, path=path):
                    length = str(4 * 1024 * 1024).encode()
                    status, headers, body = await asgi_call(
                        "PUT" if path.startswith("/blobs") else "POST",
                        path,
                        [(b"content-length", length), *self.raw_auth()],
                        chunks,
                        stall=True,
                        delay=delay,
                    )
                    self.assertEqual(status, 408)
                    self.assertEqual(headers[b"connection"], b"close")
                    self.assertIn("too slowly", json.loads(body)["error"])
        self.assertEqual(await self.contents(), {"kept": b"old"})
        self.assertEqual(await BlobChunk.objects.acount(), 0)

    @override_settings(BLOBSTORE_BODY_TIMEOUT=0.3)
    async def test_a_small_body_read_before_the_view_that_stalls_is_408(self) -> None:
        await self.put("kept", b"old")
        for method, path in (("PUT", "/blobs/kept"), ("POST", "/set?key=kept")):
            with self.subTest(path), warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always", ResourceWarning)
                status, headers, body = await asgi_call(
                    method,
                    path,
                    [(b"content-length", b"1024"), *self.raw_auth()],
                    [b"x" * 512],
                    stall=True,
                )
                gc.collect()
                # Nothing of the unfinished body is left for the collector to close.
                self.assertEqual([str(warning.message) for warning in warned], [])
                self.assertEqual(status, 408)
                self.assertEqual(headers[b"connection"], b"close")
                self.assertEqual(headers[b"x-content-type-options"], b"nosniff")
                self.assertIn("too slowly", json.loads(body)["error"])
        self.assertEqual(await self.contents(), {"kept": b"old"})

    async def test_a_client_that_hangs_up_mid_body_is_not_answered(self) -> None:
        await self.put("kept", b"old")
        for length in (1024, 4 * 1024 * 1024):  # read before the view, and by the view
            for method, path in (("PUT", "/blobs/kept"), ("POST", "/set?key=kept")):
                with self.subTest(length=length, path=path):
                    began = time.monotonic()
                    sent = await asgi_messages(
                        method,
                        path,
                        [(b"content-length", str(length).encode()), *self.raw_auth()],
                        [b"x" * 512],
                        hang_up=True,
                    )
                    self.assertEqual(sent, [])
                    # Ended by the hang-up, not by BLOBSTORE_BODY_TIMEOUT (30 s).
                    self.assertLess(time.monotonic() - began, 10)
        self.assertEqual(await self.contents(), {"kept": b"old"})

    @override_settings(BLOBSTORE_BODY_TIMEOUT=0.3)
    async def test_a_slow_body_that_keeps_coming_is_stored(self) -> None:
        pieces = [b"z" * (96 * 1024)] * 8  # 96 KiB every 0.1 s: slow, but moving
        status, _, body = await asgi_call(
            "PUT",
            "/blobs/slow",
            [(b"content-length", str(8 * 96 * 1024).encode()), *self.raw_auth()],
            pieces,
            delay=0.1,
        )
        self.assertEqual(status, 201, body)
        self.assertEqual(await self.contents(), {"slow": b"".join(pieces)})


async def asgi_call(
    method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], **client: Any
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send a request as asgi_messages() does (client: stall, delay); return the answer."""
    sent = await asgi_messages(method, path, headers, chunks, **client)
    start = sent[0]
    answered = {name.lower(): value for name, value in start["headers"]}
    return start["status"], answered, b"".join(m.get("body", b"") for m in sent[1:])


async def asgi_messages(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    *,
    stall: bool = False,
    hang_up: bool = False,
    delay: float = 0.0,
) -> list[dict[str, Any]]:
    """Send a request to the site's short path as an ASGI server would; return what it sent.

    The body is chunks, delay seconds apart; then, with stall, the client
    sends nothing more, and with hang_up it goes away. Unlike the test
    client, headers go as they are given.
    """
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if hang_up:
        pending.append({"type": "http.disconnect"})
    elif not stall:
        pending.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        if not pending:
            await asyncio.Event().wait()  # the client sends nothing more
        await asyncio.sleep(delay)
        return pending.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(dict(message))

    # As Django's test client does: the test's transaction keeps its connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        # Bounded: a server that never gave up on a stalled body would hang the suite.
        await asyncio.wait_for(get_asgi_application()(scope, receive, send), 20)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return sent


@override_settings(BLOBSTORE_MAX_UPLOADS=1)
class UploadSlotTests(SimpleTestCase):
    """Large bodies wait for one of BLOBSTORE_MAX_UPLOADS slots; one that gives up takes none."""

    def large_body(self) -> RequestBody:
        request = RequestFactory().put("/blobs/k", CONTENT_LENGTH=str(LARGE_BODY + 1))
        return request_body(request, None, "default")

    async def test_a_waiter_cancelled_takes_no_slot_and_the_next_one_gets_it(self) -> None:
        holder = self.large_body()
        await holder.__aenter__()
        waiting = asyncio.ensure_future(self.large_body().__aenter__())
        await asyncio.sleep(0.01)
        self.assertFalse(waiting.done())  # the one slot is held
        waiting.cancel()  # the client hung up while it waited
        with self.assertRaises(asyncio.CancelledError):
            await waiting
        await holder.__aexit__(None, None, None)
        slots = _slots[asyncio.get_running_loop()]
        self.assertEqual((slots.taken, slots.freed), (0, []))
        after = self.large_body()
        await asyncio.wait_for(after.__aenter__(), 1)  # at once: no slot was lost
        await after.__aexit__(None, None, None)

    async def test_a_waiter_that_gets_no_slot_in_time_is_503(self) -> None:
        holder = self.large_body()
        await holder.__aenter__()
        try:
            with (
                mock.patch("blobstore.api.responses.UPLOAD_SLOT_WAIT", 0.05),
                self.assertRaises(APIError) as refused,
            ):
                await self.large_body().__aenter__()
        finally:
            await holder.__aexit__(None, None, None)
        self.assertEqual(refused.exception.status, 503)
        self.assertEqual(_slots[asyncio.get_running_loop()].taken, 0)
