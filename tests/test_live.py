"""The API under uvicorn (the demo site, a new project's), driven by httpx and ProxyStore."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
from django.test import SimpleTestCase
from proxystore.connectors.endpoint import EndpointConnector
from proxystore.store import Store

from tests.live import LiveAPITestCase
from tests.races_site import RaceSite


class LiveAPITests(LiveAPITestCase):
    def test_crud_with_unicode_keys(self) -> None:
        for key in ["ключ/файл.txt", "😀 emoji", "a%b", "deep/er/path"]:
            with self.subTest(key=key):
                path = quote(key)
                self.assertEqual(self.http.put(path, content=key.encode()).status_code, 201)
                got = self.http.get(path)
                self.assertEqual((got.status_code, got.content), (200, key.encode()))
                listed = self.http.get("", params={"prefix": key}).json()["blobs"]
                self.assertEqual([blob["key"] for blob in listed], [key])
                head = self.http.head(path)
                self.assertEqual(head.headers["content-length"], str(len(key.encode())))
                self.assertEqual(self.http.delete(path).status_code, 204)
                self.assertEqual(self.http.get(path).status_code, 404)

    def test_chunked_upload_without_content_length(self) -> None:
        pieces = [os.urandom(256 * 1024) for _ in range(12)]

        def body() -> Iterator[bytes]:
            yield from pieces

        response = self.http.put("chunked", content=body())
        self.assertEqual(response.status_code, 201, response.text)
        data = b"".join(pieces)
        got = self.http.get("chunked")
        self.assertEqual(got.content, data)
        self.assertEqual(got.headers["etag"], f'"{hashlib.sha256(data).hexdigest()}"')
        ranged = self.http.get("chunked", headers={"Range": "bytes=1000-1999"})
        self.assertEqual((ranged.status_code, ranged.content), (206, data[1000:2000]))

    def test_body_declared_too_large_is_refused_before_it_is_sent(self) -> None:
        request = (
            "PUT /blobs/huge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.secret}\r\nContent-Length: {10**12}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.site.port), timeout=10) as connection:
            connection.sendall(request.encode())  # and not one byte of the body
            answer = b""
            while not answer.endswith(b"}\n"):
                answer += connection.recv(65536)
        head, _, body = answer.decode().partition("\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.1 413"), head)
        self.assertIn(f"content-length: {len(body)}", head.lower())
        self.assertIn("limit", json.loads(body)["error"])
        self.assertEqual(self.http.get("huge").status_code, 404)

    def test_chunked_body_over_the_limit_is_refused_and_stores_nothing(self) -> None:
        self.http.put("kept", content=b"old")
        piece = b"x" * (1024 * 1024)

        def body() -> Iterator[bytes]:
            for _ in range(101):  # 101 MiB against the 100 MiB limit
                yield piece

        try:
            response = self.http.put("kept", content=body())
            self.assertEqual(response.status_code, 413)
        except httpx.TransportError:
            pass  # the server may answer and close before the client has sent it all
        self.assertEqual(self.http.get("kept").content, b"old")

    def test_key_that_is_not_utf8_is_400(self) -> None:
        for response in (
            self.http.put("%FF%FE", content=b"x"),
            self.http.get("%FF%FE"),
            httpx.get(f"{self.site.url}/exists?key=%FF"),
        ):
            self.assertEqual(response.status_code, 400)
            self.assertIn("UTF-8", response.json()["error"])
        keys = [blob["key"] for blob in self.http.get("").json()["blobs"]]
        self.assertFalse([key for key in keys if "\ufffd" in key])

    def test_anonymous_and_bad_token_are_refused(self) -> None:
        anonymous = httpx.put(f"{self.site.url}/blobs/k", content=b"x")
        self.assertEqual(anonymous.status_code, 401)
        bad = httpx.get(f"{self.site.url}/blobs/", headers={"Authorization": "Bearer bs_x"})
        self.assertEqual(bad.status_code, 401)

    def test_a_change_to_a_token_or_its_user_holds_from_the_next_request(self) -> None:
        shell = functools.partial(self.site.manage, "shell", "-c")
        assert_token_changes_hold(self, shell, f"{self.site.url}/blobs/")

    def test_proxystore_endpoint_connector_and_store(self) -> None:
        home = self.site.directory / "proxystore"
        self.site.manage(
            "blobstore", "proxystore-config", "live", "--host", "127.0.0.1",
            "--port", str(self.site.port), "--proxystore-home", str(home),
        )  # fmt: skip
        endpoint = httpx.get(f"{self.site.url}/endpoint").json()["uuid"]
        connector = EndpointConnector([endpoint], proxystore_dir=str(home))
        store = Store(f"live-{uuid.uuid4()}", connector, register=False)
        try:
            large = os.urandom(5 * 1024 * 1024)  # sent chunked, with no Content-Length
            for value in ({"a": 1}, "text", large):
                key = store.put(value)
                self.assertTrue(store.exists(key))
                self.assertEqual(store.get(key), value)
                store.evict(key)
                self.assertFalse(store.exists(key))
                self.assertIsNone(store.get(key))
            raw_key = connector.put(b"raw")
            self.assertEqual(connector.get(raw_key), b"raw")
            absent = type(raw_key)(object_id="absent", endpoint_id=raw_key.endpoint_id)
            self.assertIsNone(connector.get(absent))
        finally:
            store.close()


class HostSiteTokenTests(SimpleTestCase):
    """A new project's site under uvicorn, through Django's own handler, its SQLite file in WAL."""

    def test_a_change_to_a_token_or_its_user_holds_from_the_next_request(self) -> None:
        site = RaceSite("tests.hostsite.settings", "tests.hostsite.asgi:application")
        self.addCleanup(site.stop)
        site.start()
        # WAL, which stays with the file: the server keeps a token's rows only then.
        with contextlib.closing(sqlite3.connect(site.sqlite_path)) as database:
            (mode,) = database.execute("PRAGMA journal_mode=WAL").fetchone()
        self.assertEqual(mode, "wal")
        assert_token_changes_hold(self, site.shell, f"{site.url}/blobs/")


def assert_token_changes_hold(
    test: SimpleTestCase, shell: Callable[[str], str], api_url: str
) -> None:
    """Assert that a token user's deactivation, reactivation and revocation hold at once.

    shell runs Python in another process, on the site's database. The server
    keeps a token's rows while its SQLite file is unchanged: each change must
    be seen by the next request all the same.
    """
    imports = (
        "from django.contrib.auth.models import User; from django.utils import timezone; "
        "from blobstore.models import APIToken; "
    )
    make_token = "user = User.objects.create_superuser('ex', password='pw'); "
    secret = shell(imports + make_token + "print(APIToken.objects.create_token(user)[1])")
    headers = {"Authorization": f"Bearer {secret.split()[-1]}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as http:
        test.assertEqual(http.put("ex", content=b"x").status_code, 201)
        for _ in range(2):  # the token's rows read, then kept
            test.assertEqual(http.get("ex").status_code, 200)
        steps = [
            ("User.objects.filter(username='ex').update(is_active=False)", 401),
            ("User.objects.filter(username='ex').update(is_active=True)", 200),
            ("APIToken.objects.filter(user__username='ex').update(revoked=timezone.now())", 401),
        ]
        for change, status in steps:
            with test.subTest(change=change):
                shell(imports + change)
                test.assertEqual(http.get("ex").status_code, status)
