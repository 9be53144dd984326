"""The ProxyStore routes as a closed door: hosts, browsers, one prefix on one storage alias."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from asgiref.sync import async_to_sync
from django.core.asgi import get_asgi_application as django_asgi_application
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import SimpleTestCase, override_settings
from playwright.sync_api import sync_playwright

from blobstore.asgi import get_asgi_application
from blobstore.contrib.proxystore import endpoint_uuid
from blobstore.contrib.proxystore.checks import check_proxystore
from blobstore.storage import DictStorage, storages
from tests.browser import launch_chromium
from tests.hostsite import settings as hostsite
from tests.live import LiveSite

STORAGES = {
    "default": {"BACKEND": "blobstore.storage.DictStorage"},
    "ps": {"BACKEND": "blobstore.storage.DictStorage"},
}
ROUTES = [
    ("GET", "/endpoint", None),
    ("GET", "/exists?key=kept", None),
    ("GET", "/get?key=kept", None),
    ("POST", "/set?key=kept", b"changed"),
    ("POST", "/set?key=new", b"new"),
    ("POST", "/evict?key=kept", None),
]


def blobs(alias: str = "default") -> dict[str, bytes]:
    store = storages[alias]
    assert isinstance(store, DictStorage)
    return dict(store._data)


@override_settings(BLOBSTORE_STORAGES=STORAGES)
class DoorTests(SimpleTestCase):
    """Requests through blobstore.asgi, as uvicorn would make them, on DictStorage."""

    def setUp(self) -> None:
        for alias in STORAGES:
            store = storages[alias]
            assert isinstance(store, DictStorage)
            store._data.clear()
        async_to_sync(storages["default"].set)("proxystore/kept", b"old")
        async_to_sync(storages["default"].set)("kept", b"not ProxyStore's")
        for signal in (request_started, request_finished):
            signal.disconnect(close_old_connections)
            self.addCleanup(signal.connect, close_old_connections)

    def application(self) -> Any:
        """Return the site's ASGI application: blobstore's, with the API on the short path."""
        return get_asgi_application()

    def http(self, host: str = "localhost", **headers: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.application(), client=("127.0.0.1", 1))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{host}", headers=headers)

    async def assert_every_route_refused(self, status: int, http: httpx.AsyncClient) -> None:
        before = blobs()
        async with http:
            for method, path, body in ROUTES:
                with self.subTest(method=method, path=path):
                    response = await http.request(method, path, content=body)
                    self.assertEqual(response.status_code, status, response.text)
                    self.assertIn("error", response.json())
                    self.assertEqual(response.headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(blobs(), before)

    async def test_a_host_outside_allowed_hosts_is_400(self) -> None:
        await self.assert_every_route_refused(400, self.http("rebind.example"))

    async def test_a_request_with_an_origin_is_403(self) -> None:
        for origin in ("http://localhost:9999", "null", "http://localhost"):
            with self.subTest(origin=origin):
                await self.assert_every_route_refused(403, self.http(Origin=origin))

    async def test_a_request_a_page_made_is_403(self) -> None:
        for site in ("cross-site", "same-site", "same-origin", "SAME-ORIGIN", ""):
            with self.subTest(site=site):
                await self.assert_every_route_refused(403, self.http(**{"Sec-Fetch-Site": site}))

    async def test_a_url_typed_in_the_browser_is_served(self) -> None:
        async with self.http(**{"Sec-Fetch-Site": "none"}) as http:
            self.assertEqual((await http.get("/get?key=kept")).content, b"old")

    async def test_keys_are_under_the_prefix(self) -> None:
        async with self.http() as http:
            self.assertEqual((await http.post("/set?key=a/b", content=b"1")).status_code, 200)
            self.assertEqual((await http.get("/get?key=kept")).content, b"old")
            for outside in ("../kept", "/kept", "%2e%2e/kept"):
                with self.subTest(key=outside):
                    self.assertEqual((await http.get(f"/get?key={outside}")).status_code, 404)
            # ProxyStore's key "" is a key like another: the blob "proxystore/".
            self.assertEqual((await http.post("/set?key=", content=b"2")).status_code, 200)
        self.assertEqual(blobs()["proxystore/a/b"], b"1")
        self.assertEqual(blobs()["proxystore/"], b"2")
        self.assertEqual(blobs()["kept"], b"not ProxyStore's")

    async def test_prefix_and_storage_alias_are_settings(self) -> None:
        with override_settings(BLOBSTORE_PROXYSTORE={"PREFIX": "ps:", "STORAGE": "ps"}):
            async with self.http() as http:
                self.assertEqual((await http.post("/set?key=k", content=b"v")).status_code, 200)
                self.assertEqual((await http.get("/get?key=kept")).status_code, 404)
            self.assertEqual(blobs("ps"), {"ps:k": b"v"})
        self.assertNotIn("ps:k", blobs())

    async def test_proxystore_behaviours(self) -> None:
        foreign = "00000000-0000-4000-8000-000000000000"
        self.assertNotEqual(str(endpoint_uuid()), foreign)
        before = blobs()
        async with self.http() as http:
            cases: list[tuple[str, str, str, bytes | AsyncIterator[bytes] | None]] = [
                ("empty body", "POST", "/set?key=k", b""),
                ("empty chunked body", "POST", "/set?key=k", empty_chunks()),
                ("no key", "POST", "/set", b"x"),
                ("no key", "GET", "/get", None),
                ("no key", "GET", "/exists", None),
                ("no key", "POST", "/evict", None),
                ("malformed endpoint", "GET", "/get?key=kept&endpoint=nope", None),
            ]
            for what, method, path, body in cases:
                with self.subTest(what, method=method, path=path):
                    response = await http.request(method, path, content=body)
                    self.assertEqual(response.status_code, 400, response.text)
            self.assertEqual(blobs(), before)
            # A well-formed UUID of another endpoint is served here, as ProxyStore's
            # endpoint with no peers does.
            served = await http.post(f"/set?key=f&endpoint={foreign}", content=b"v")
            self.assertEqual(served.status_code, 200)
            got = await http.get(f"/get?key=f&endpoint={uuid.UUID(foreign).hex}")
            self.assertEqual(got.content, b"v")

    def test_check_e008_names_a_bad_prefix_or_alias(self) -> None:
        with override_settings(BLOBSTORE_PROXYSTORE={"PREFIX": "ok/", "STORAGE": "ps"}):
            self.assertEqual(check_proxystore(), [])
        for setting, fragment in [
            ({"PREFIX": 5}, "PREFIX"),
            ({"PREFIX": "a\nb"}, "control"),
            ({"STORAGE": "nope"}, "'nope'"),
            ({"STORAGE": None}, "STORAGE"),
        ]:
            with self.subTest(setting=setting), override_settings(BLOBSTORE_PROXYSTORE=setting):
                (error,) = check_proxystore()
                self.assertEqual(error.id, "blobstore.E008")
                self.assertIn(fragment, error.msg)


async def empty_chunks() -> AsyncIterator[bytes]:
    """Yield nothing, so that httpx sends an empty chunked body."""
    chunks: tuple[bytes, ...] = ()
    for chunk in chunks:
        yield chunk


PAGE = """<!doctype html><title>another origin</title><script>
window.done = Promise.allSettled([
  fetch("{site}/set?key=planted", {{method: "POST", mode: "no-cors", body: "pwned"}}),
  fetch("{site}/evict?key=victim", {{method: "POST", mode: "no-cors"}}),
]);
</script>"""


@override_settings(MIDDLEWARE=[])
class DjangoHandlerDoorTests(DoorTests):
    """The same door through Django's own handler, with no middleware to check the host first."""

    def application(self) -> Any:
        return django_asgi_application()


@override_settings(MIDDLEWARE=hostsite.MIDDLEWARE, ALLOWED_HOSTS=hostsite.ALLOWED_HOSTS)
class HostSiteDoorTests(DoorTests):
    """The same door in a new project's site: Django's own handler and startproject's middleware."""

    def application(self) -> Any:
        return django_asgi_application()

    async def test_a_host_outside_allowed_hosts_is_400(self) -> None:
        # CommonMiddleware refuses it before the door, with Django's own 400 page.
        before = blobs()
        async with self.http("rebind.example") as http:
            for method, path, body in ROUTES:
                with self.subTest(method=method, path=path):
                    response = await http.request(method, path, content=body)
                    self.assertEqual(response.status_code, 400)
        self.assertEqual(blobs(), before)


class BrowserTests(SimpleTestCase):
    """A page on another origin, in Chromium, cannot write or evict through the routes."""

    def test_a_page_on_another_origin_changes_nothing(self) -> None:
        site = LiveSite()
        self.addCleanup(site.stop)
        site.manage("migrate", "--verbosity=0")
        site.start()
        http = httpx.Client(base_url=site.url, timeout=30)
        self.addCleanup(http.close)
        self.assertEqual(http.post("/set?key=victim", content=b"kept").status_code, 200)
        pages = page_server(PAGE.format(site=site.url))
        self.addCleanup(pages.server_close)
        self.addCleanup(pages.shutdown)
        playwright = sync_playwright().start()
        self.addCleanup(playwright.stop)
        browser = launch_chromium(playwright)
        self.addCleanup(browser.close)
        port = pages.server_address[1]
        # Both on loopback, as the site: localhost is another site than 127.0.0.1,
        # and another port of 127.0.0.1 is the same site (another origin).
        for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}"):
            with self.subTest(origin=origin):
                page = browser.new_page()
                page.goto(f"{origin}/")
                outcomes = page.evaluate("window.done.then(r => r.map(o => o.status))")
                page.close()
                # no-cors: the page sees opaque answers, whatever the server said.
                self.assertEqual(outcomes, ["fulfilled", "fulfilled"])
                self.assertEqual(http.get("/get?key=victim").content, b"kept")
                self.assertEqual(http.get("/exists?key=planted").json(), {"exists": False})


def page_server(html: str) -> ThreadingHTTPServer:
    """Serve html at / on a free loopback port, in a thread, until shut down."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
