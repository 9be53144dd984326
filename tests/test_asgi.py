"""blobstore.asgi: Django's own handler, with the API routes on the short path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any
from unittest import mock

import httpx
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.core.asgi import get_asgi_application as django_asgi_application
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import SimpleTestCase, TestCase, override_settings

from blobstore.api.checks import check_api_middleware
from blobstore.asgi import ASGIHandler, get_asgi_application
from blobstore.models import APIToken
from blobstore.storage import BlobStream, DictStorage, ORMStorage, storages
from tests.hostsite import settings as hostsite

DICT_STORAGE = {"default": {"BACKEND": "blobstore.storage.DictStorage"}}
MIB = 1024 * 1024
DISCONNECT = {"type": "http.disconnect"}
FOREIGN_HOST = "rebind.example"


class ShortPathTestCase(TestCase):
    """A token, and requests through blobstore.asgi as uvicorn would make them."""

    token: str

    @classmethod
    def setUpTestData(cls) -> None:
        admin = User.objects.create_superuser("admin", password="pw")
        cls.token = APIToken.objects.create_token(admin)[1]

    def setUp(self) -> None:
        # As Django's test client does: requests must not close the test's connection.
        for signal in (request_started, request_finished):
            signal.disconnect(close_old_connections)
            self.addCleanup(signal.connect, close_old_connections)

    def http(self, host: str = "localhost", app: Any = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=app or get_asgi_application(),  # type: ignore[arg-type]  # httpx: MutableMapping
            client=("127.0.0.1", 1),
        )
        return httpx.AsyncClient(
            transport=transport,
            base_url=f"http://{host}",
            headers={"Authorization": f"Bearer {self.token}"},
        )


@override_settings(BLOBSTORE_STORAGES=DICT_STORAGE)
class AllowedHostsTests(ShortPathTestCase):
    ROUTES = [
        ("GET", "/blobs/", None),
        ("GET", "/blobs/kept", None),
        ("HEAD", "/blobs/kept", None),
        ("PUT", "/blobs/kept", b"changed"),
        ("PUT", "/blobs/new", b"new"),
        ("DELETE", "/blobs/kept", None),
        ("GET", "/endpoint", None),
        ("GET", "/exists?key=kept", None),
        ("GET", "/get?key=kept", None),
        ("POST", "/set?key=kept", b"changed"),
        ("POST", "/evict?key=kept", None),
    ]

    async def test_a_host_outside_allowed_hosts_is_400_json_on_every_api_route(self) -> None:
        store = storages["default"]
        assert isinstance(store, DictStorage)
        await store.set("kept", b"old")
        await store.set("proxystore/kept", b"old")
        before = dict(store._data)
        async with self.http(FOREIGN_HOST) as http:
            for method, path, body in self.ROUTES:
                with self.subTest(method=method, path=path):
                    response = await http.request(method, path, content=body)
                    self.assertEqual(response.status_code, 400, response.text)
                    if method != "HEAD":
                        self.assertIn("not serve", response.json()["error"])
        self.assertEqual(store._data, before)

    async def test_allowed_hosts_are_served(self) -> None:
        async with self.http("127.0.0.1") as http:
            self.assertEqual((await http.put("/blobs/k", content=b"v")).status_code, 201)
            self.assertEqual((await http.get("/blobs/k")).content, b"v")

    async def test_the_refusal_is_logged_as_django_logs_it(self) -> None:
        async with self.http(FOREIGN_HOST) as http:
            with self.assertLogs("django.security.DisallowedHost", "ERROR") as logged:
                await http.get("/blobs/")
        self.assertIn(FOREIGN_HOST, logged.output[0])


@override_settings(BLOBSTORE_STORAGES=DICT_STORAGE)
class SignalAndMiddlewareTests(ShortPathTestCase):
    async def test_request_finished_is_sent_and_request_started_is_not(self) -> None:
        sent: list[str] = []

        def started(**kwargs: Any) -> None:
            sent.append("started")

        def finished(**kwargs: Any) -> None:
            sent.append("finished")

        request_started.connect(started)
        request_finished.connect(finished)
        self.addCleanup(request_started.disconnect, started)
        self.addCleanup(request_finished.disconnect, finished)
        async with self.http() as http:
            await http.get("/blobs/")
        self.assertEqual(sent, ["finished"])
        async with self.http() as http:
            await http.get("/admin/login/")  # not an API route: Django's handler sends both
        self.assertEqual(sent, ["finished", "started", "finished"])

    async def test_api_routes_skip_middleware_and_other_routes_keep_it(self) -> None:
        async with self.http() as http:
            api = await http.get("/blobs/")
            admin = await http.get("/admin/login/")
        self.assertNotIn("X-Frame-Options", api.headers)  # XFrameOptionsMiddleware
        self.assertEqual(admin.headers["X-Frame-Options"], "DENY")

    async def test_listed_async_middleware_run_on_api_routes(self) -> None:
        with override_settings(BLOBSTORE_API_MIDDLEWARE=["tests.api_middleware.MarkingMiddleware"]):
            app = ASGIHandler()
        async with self.http(app=app) as http:
            self.assertEqual((await http.get("/blobs/")).headers["X-Marked"], "yes")
            self.assertEqual((await http.get("/endpoint")).headers["X-Marked"], "yes")

    def test_a_synchronous_middleware_cannot_be_listed(self) -> None:
        for value, fragment in [
            (["tests.api_middleware.sync_only_middleware"], "not async-capable"),
            (["tests.api_middleware.Nope"], "cannot be imported"),
            ("tests.api_middleware.MarkingMiddleware", "must list import paths"),
        ]:
            with self.subTest(value=value), override_settings(BLOBSTORE_API_MIDDLEWARE=value):
                with self.assertRaisesMessage(ImproperlyConfigured, fragment):
                    ASGIHandler()
                (error,) = check_api_middleware()
                self.assertEqual(error.id, "blobstore.E010")
                self.assertIn(fragment, error.msg)


class MiddlewareCheckTests(SimpleTestCase):
    def test_skipped_middleware_that_matters_is_warned_about(self) -> None:
        security = "django.middleware.security.SecurityMiddleware"
        login = "django.contrib.auth.middleware.LoginRequiredMiddleware"
        own = "shop.middleware.IPAllowList"
        with override_settings(MIDDLEWARE=[security, login, own], SECURE_SSL_REDIRECT=True):
            warnings = check_api_middleware()
        self.assertEqual([warning.id for warning in warnings], ["blobstore.W002"] * 3)
        for warning, path in zip(warnings, [security, login, own], strict=True):
            self.assertIn(repr(path), warning.msg)
        self.assertIn("SECURE_SSL_REDIRECT", warnings[0].msg)

    def test_django_defaults_are_safe_to_skip(self) -> None:
        self.assertEqual(check_api_middleware(), [])
        security = "django.middleware.security.SecurityMiddleware"
        with override_settings(MIDDLEWARE=[security], SECURE_SSL_REDIRECT=False):
            self.assertEqual(check_api_middleware(), [])


@override_settings(
    BLOBSTORE_STORAGES=DICT_STORAGE,
    MIDDLEWARE=hostsite.MIDDLEWARE,
    ALLOWED_HOSTS=hostsite.ALLOWED_HOSTS,
    ROOT_URLCONF=hostsite.ROOT_URLCONF,
)
class HostSiteRESTTests(ShortPathTestCase):
    """The REST routes in a new project's site, through Django's own handler and its middleware."""

    def http(self, host: str = "localhost", app: Any = None) -> httpx.AsyncClient:
        return super().http(host, app or django_asgi_application())

    async def test_a_token_user_with_permissions_writes_and_reads_with_attributes(self) -> None:
        user = await User.objects.acreate_user("writer", password="pw")
        await user.user_permissions.aset(
            [
                permission
                async for permission in Permission.objects.filter(
                    codename__in=["view_blob", "add_blob", "change_blob"]
                )
            ]
        )
        _, secret = await sync_to_async(APIToken.objects.create_token)(user)
        headers = {"Authorization": f"Bearer {secret}", "X-Blobstore-Meta-Shot-At": "dawn"}
        async with self.http() as http:
            created = await http.put("/blobs/a.txt", content=b"hi", headers=headers)
            self.assertEqual(created.status_code, 201, created.text)  # past CsrfViewMiddleware
            self.assertEqual(created.json()["metadata"], {"shot-at": "dawn"})
            self.assertTrue(created.content.endswith(b"}\n"))
            self.assertEqual(created.headers["X-Content-Type-Options"], "nosniff")
            read = await http.get("/blobs/a.txt", headers=headers)
            self.assertEqual((read.status_code, read.content), (200, b"hi"))
            self.assertEqual(read.headers["X-Blobstore-Meta-Shot-At"], "dawn")
            # Made for one user, through the site's own middleware as well.
            for response in (created, read):
                self.assertEqual(response.headers["Cache-Control"], "private, no-cache")
                self.assertEqual(response.headers["Vary"], "Authorization, Cookie")
            refused = await http.delete("/blobs/a.txt", headers=headers)
            self.assertEqual(refused.status_code, 403)
            self.assertIn("delete_blob", refused.json()["error"])
        self.assertEqual(await storages["default"].get("a.txt"), b"hi")


class DisconnectTests(ShortPathTestCase):
    """A client that hangs up mid-download cancels the view: the database reads stop."""

    async def test_a_download_stops_reading_soon_after_the_client_hangs_up(self) -> None:
        blob_size = 16 * MIB
        store = ORMStorage()
        await store.set("big", b"x" * blob_size)
        read = 0
        opened = ORMStorage.stream

        async def counting_stream(self: ORMStorage, *args: Any, **kwargs: Any) -> BlobStream:
            stream = await opened(self, *args, **kwargs)
            assert stream is not None
            chunks = aiter(stream)

            async def counted() -> AsyncIterator[bytes]:
                nonlocal read
                async for chunk in chunks:
                    read += 1
                    yield chunk

            stream._chunks = counted()
            return stream

        with mock.patch.object(ORMStorage, "stream", counting_stream):
            received = await hang_up_after("/blobs/big", self.token, body_messages=2)
        self.assertGreater(received, 0)
        # The blob is 16 chunks; the view was cancelled within a few of them.
        self.assertLessEqual(read, 3)


@override_settings(BLOBSTORE_STORAGES=DICT_STORAGE)
class CancellationTests(ShortPathTestCase):
    """Who ends a request whose view has not answered: the client, the server, a broken server."""

    def setUp(self) -> None:
        super().setUp()
        self.view_began = asyncio.Event()
        self.view_cancelled = False
        self.sent: list[Mapping[str, Any]] = []
        self.body_files: list[Any] = []

        async def stalled_stream(*args: Any, **kwargs: Any) -> BlobStream:
            self.view_began.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.view_cancelled = True
                raise
            raise AssertionError("unreachable")

        patch = mock.patch.object(DictStorage, "stream", stalled_stream)
        patch.start()
        self.addCleanup(patch.stop)

    def serve(self, receive: Any) -> asyncio.Task[None]:
        async def send(message: Mapping[str, Any]) -> None:
            self.sent.append(message)

        app = get_asgi_application()
        create_request = app.create_request

        def recording_body(scope: dict[str, Any], body_file: Any) -> Any:
            self.body_files.append(body_file)
            return create_request(scope, body_file)

        app.create_request = recording_body  # type: ignore[assignment]
        return asyncio.ensure_future(app(get_scope("/blobs/k", self.token), receive, send))

    def assert_body_closed(self) -> None:
        """Assert that the request's body file was closed, though no response closed it."""
        self.assertEqual([body.closed for body in self.body_files], [True])

    async def began(self, serving: asyncio.Task[None]) -> None:
        """Wait until the view stalls in the storage; fail if the request ends first."""
        began = asyncio.ensure_future(self.view_began.wait())
        await asyncio.wait([serving, began], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        self.assertFalse(serving.done(), "the request ended before its view began")
        self.assertTrue(began.done(), "the view did not begin within 5 s")

    async def ended(self, serving: asyncio.Task[None]) -> None:
        """Wait for the request to end by itself, without cancelling it."""
        await asyncio.wait([serving], timeout=5)
        self.assertTrue(serving.done(), "the request did not end within 5 s")

    async def test_a_client_that_hangs_up_cancels_the_view_and_is_sent_nothing(self) -> None:
        finished: list[object] = []

        def count(**kwargs: Any) -> None:
            finished.append(kwargs["sender"])

        request_finished.connect(count)
        self.addCleanup(request_finished.disconnect, count)
        hang_up = asyncio.Event()
        serving = self.serve(receiving(hang_up))
        await self.began(serving)
        hang_up.set()
        await self.ended(serving)
        self.assertIsNone(serving.result())  # ends quietly, as Django's handler does
        self.assertTrue(self.view_cancelled)
        self.assertEqual(self.sent, [])
        self.assertEqual(len(finished), 1)
        self.assert_body_closed()

    async def test_a_server_that_cancels_a_request_sees_it_cancelled(self) -> None:
        serving = self.serve(receiving(asyncio.Event()))  # a client that stays
        await self.began(serving)
        serving.cancel()  # as uvicorn does when it shuts down
        await self.ended(serving)
        self.assertTrue(serving.cancelled())
        self.assertTrue(self.view_cancelled)
        self.assert_body_closed()

    async def test_a_message_after_the_body_other_than_a_disconnect_is_raised(self) -> None:
        serving = self.serve(receiving(self.view_began, {"type": "http.request", "body": b"more"}))
        # As Django's handler: its listener's failure ends the request, and is raised.
        await self.ended(serving)
        with self.assertRaisesMessage(AssertionError, "Invalid ASGI message after request body"):
            serving.result()
        self.assertTrue(self.view_cancelled)
        self.assertEqual(self.sent, [])
        self.assert_body_closed()


async def hang_up_after(path: str, token: str, *, body_messages: int) -> int:
    """GET path through blobstore.asgi, hang up after body_messages; return the bytes received."""
    gone = asyncio.Event()
    received = 0
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.body":
            received += len(message.get("body", b""))
            if received >= body_messages * 2**16:
                gone.set()
                await asyncio.sleep(0.05)  # as a socket whose buffer is full

    await asyncio.wait_for(get_asgi_application()(get_scope(path, token), receive, send), 30)
    return received


def get_scope(path: str, token: str) -> dict[str, Any]:
    """Return the scope of a GET of path with token, as uvicorn makes it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("localhost", 80),
    }


def receiving(when: asyncio.Event, then: Mapping[str, Any] = DISCONNECT) -> Any:
    """Return an ASGI receive that gives an empty body, and once when is set, then."""
    body = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Mapping[str, Any]:
        if body:
            return body.pop()
        await when.wait()
        return then

    return receive
