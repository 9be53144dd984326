"""One key rule, everywhere: property tests over the key alphabet.

A key is 1 to 1024 bytes of UTF-8 with no control character and no lone
surrogate. Every such key round-trips through ORMStorage on SQLite and
PostgreSQL, the REST routes, the ProxyStore routes and the admin; every other
string is refused by each of them (ValueError, 400 JSON, a form error) and
leaves the store as it was.

``BLOBSTORE_KEYS_PROFILE=thorough`` runs many more examples than the default.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile
from django.http import StreamingHttpResponse
from django.test import override_settings
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.extra.django import TestCase

from blobstore.admin.forms import BlobAddForm
from blobstore.models import Blob, BlobChunk
from blobstore.storage import MAX_KEY_LENGTH, ORMStorage
from tests.test_asgi import ShortPathTestCase

DATABASES = ("default", "postgres")
Test = TypeVar("Test", bound=Callable[..., None])

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    database=DirectoryBasedExampleDatabase(django_settings.VAR_DIR / "hypothesis"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
settings.register_profile("thorough", settings.get_profile("default"), max_examples=1000)
KEY_SETTINGS = settings.get_profile(os.environ.get("BLOBSTORE_KEYS_PROFILE", "default"))

# The alphabet of keys.
CONTROLS = "".join(map(chr, [*range(0x20), 0x7F]))
KEY_CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS)
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
AWKWARD_PIECES = [
    *"/%?#&=+;:@!$'\"()*,[]{}|\\^`<>~ .",
    "..",
    "../",
    "%2F",
    "%25",
    "%00",
    "é",
    "e\u0301",  # a combining accent: not normalized away
    "\u00a0",
    "\x80",  # C1 controls are not control characters in the key rule
    "\x85",
    "\u2028",
    "\u200b",
    "\ufeff",
    "\ufffd",
    "\ud7ff",  # the last code point before the surrogates ...
    "\ue000",  # ... and the first after them
    "漢字",
    "ключ",
    "😀",
    "👩\u200d💻",
    "\U0010ffff",
]
WIDE_FILLERS = ["a", "/", "%", "é", "漢", "😀", "\U0010ffff", "\u0800", "\uffff"]
"""Characters of 1, 2, 3 and 4 bytes in UTF-8, repeated to reach a length in bytes."""


def utf8_length(key: str) -> int:
    return len(key.encode())


def is_utf8(key: str) -> bool:
    """Return whether key can be encoded, which a lone surrogate cannot."""
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


@st.composite
def keys_of_length(draw: st.DrawFn, lengths: st.SearchStrategy[int]) -> str:
    """Draw a key of exactly one of lengths bytes: a prefix, a repeated character, ASCII padding."""
    length = draw(lengths)
    prefix = draw(st.text(KEY_CHARACTERS, max_size=8))
    if utf8_length(prefix) > length:
        prefix = ""
    filler = draw(st.one_of(st.sampled_from(WIDE_FILLERS), KEY_CHARACTERS))
    repeats, rest = divmod(length - utf8_length(prefix), utf8_length(filler))
    padding = draw(st.text(st.sampled_from("a/%? .#"), min_size=rest, max_size=rest))
    # The padding goes first or last, so that the multi-byte run ends the key or does not.
    key = (
        prefix + filler * repeats + padding
        if draw(st.booleans())
        else padding + prefix + filler * repeats
    )
    assert utf8_length(key) == length
    return key


def valid_keys() -> st.SearchStrategy[str]:
    """Draw keys that the rule accepts, awkward ones and ones at the limit often."""
    near_limit = st.one_of(st.just(MAX_KEY_LENGTH), st.integers(MAX_KEY_LENGTH - 8, MAX_KEY_LENGTH))
    return st.one_of(
        st.lists(
            st.one_of(
                st.sampled_from(AWKWARD_PIECES), st.text(KEY_CHARACTERS, min_size=1, max_size=6)
            ),
            min_size=1,
            max_size=10,
        ).map("".join),
        st.text(KEY_CHARACTERS, min_size=1, max_size=40),
        keys_of_length(near_limit),
        keys_of_length(st.integers(1, MAX_KEY_LENGTH)),
    )


@st.composite
def with_inserted(draw: st.DrawFn, characters: st.SearchStrategy[str]) -> str:
    """Draw a valid key with one of characters put in somewhere."""
    key = draw(valid_keys())
    at = draw(st.integers(0, len(key)))
    return key[:at] + draw(characters) + key[at:]


def invalid_keys(*, empty: bool = True) -> st.SearchStrategy[str]:
    """Draw keys that the rule refuses: control characters, lone surrogates, too long, empty."""
    too_long = st.one_of(
        st.just(MAX_KEY_LENGTH + 1),
        st.integers(MAX_KEY_LENGTH + 1, MAX_KEY_LENGTH + 8),
        st.integers(MAX_KEY_LENGTH + 1, 6 * MAX_KEY_LENGTH),
    )
    strategies = [
        with_inserted(st.sampled_from(CONTROLS)),
        with_inserted(SURROGATES),
        keys_of_length(too_long),
    ]
    return st.one_of(*strategies, st.just("")) if empty else st.one_of(*strategies)


VALID_EXAMPLES = [
    "..",
    "a/../b",
    "/",
    " ",
    "%",
    "%2F?#&=+",
    "x" * MAX_KEY_LENGTH,
    "漢" * 341 + "a",  # 1024 bytes
    "😀" * 256,  # 1024 bytes
    "\U0010ffff" * 255 + "é%/",
]
INVALID_EXAMPLES = [
    "\n",
    "a\nb",
    "\x00",
    "a\rb",
    "\x7f",
    "\ud800",
    "a\udfff",
    "x" * (MAX_KEY_LENGTH + 1),
    "x" * (MAX_KEY_LENGTH - 3) + "😀",  # 1025 bytes in 1022 characters
    "é" * 513,
]


def with_examples(keys: list[str], aliases: tuple[str, ...] = ()) -> Callable[[Test], Test]:
    """Always try keys (on each of aliases, if given) besides what hypothesis draws."""

    def decorate(test: Test) -> Test:
        for key in keys:
            for alias in aliases:
                test = example(key=key, alias=alias)(test)
            if not aliases:
                test = example(key=key)(test)
        return test

    return decorate


def snapshot() -> dict[str, Any]:
    """Return what every database holds: each blob's key and digest, and the chunk rows."""
    return {
        alias: (
            sorted(Blob.objects.using(alias).values_list("key", "sha256", "size")),
            BlobChunk.objects.using(alias).count(),
        )
        for alias in DATABASES
    }


def path_of(key: str) -> str:
    """Return key percent-encoded as one path segment, dots too (no client may collapse '..')."""
    return quote(key.encode("utf-8", "surrogatepass"), safe="").replace(".", "%2E")


def query_of(key: str) -> str:
    return quote(key.encode("utf-8", "surrogatepass"), safe="")


def data_for(key: str) -> bytes:
    return b"blob of " + key.encode()[:32] + bytes(range(256))


def run(coroutine: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    async_to_sync(coroutine)(*args)


class KeyTestCase(TestCase):
    """Each example runs in a transaction of its own, rolled back after it."""

    databases = set(DATABASES)


class StorageAPITests(KeyTestCase):
    @KEY_SETTINGS
    @given(key=valid_keys(), alias=st.sampled_from(DATABASES))
    @with_examples(VALID_EXAMPLES, DATABASES)
    def test_every_valid_key_round_trips(self, key: str, alias: str) -> None:
        run(self.round_trip, ORMStorage(using=alias), key)
        self.assertEqual(snapshot()[alias], ([], 0))

    async def round_trip(self, store: ORMStorage, key: str) -> None:
        data = data_for(key)
        await store.set(key, data)
        self.assertEqual(await store.get(key), data)
        self.assertTrue(await store.exists(key))
        info = await store.stat(key)
        assert info is not None
        self.assertEqual((info.key, info.size), (key, len(data)))
        self.assertEqual([i.key for i in await store.list_blobs(key)], [key])
        stream = await store.stream(key, start=1)
        assert stream is not None
        async with stream:
            self.assertEqual(await stream.read(), data[1:])

        async def chunks() -> AsyncIterator[bytes]:
            yield b"new "
            yield data

        await store.write(key, chunks())
        self.assertEqual(await store.get(key), b"new " + data)
        await store.evict(key)
        self.assertFalse(await store.exists(key))
        self.assertIsNone(await store.get(key))

    @KEY_SETTINGS
    @given(key=invalid_keys(), alias=st.sampled_from(DATABASES))
    @with_examples(["", *INVALID_EXAMPLES], DATABASES)
    def test_every_invalid_key_is_a_value_error_and_stores_nothing(
        self, key: str, alias: str
    ) -> None:
        run(ORMStorage(using=alias).set, "existing", b"kept")
        before = snapshot()
        run(self.refuse, ORMStorage(using=alias), key)
        self.assertEqual(snapshot(), before)

    async def refuse(self, store: ORMStorage, key: str) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"x"

        for call in [
            store.get(key),
            store.set(key, b"x"),
            store.exists(key),
            store.evict(key),
            store.stat(key),
            store.stream(key),
            store.write(key, chunks()),
        ]:
            with self.assertRaises(ValueError):
                await call


class HTTPTestCase(ShortPathTestCase, KeyTestCase):
    """Requests through the site's own ASGI application, as uvicorn would make them."""

    def on(self, alias: str) -> Any:
        """Serve the routes from an ORMStorage on database alias."""
        storage = {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"using": alias}}
        return override_settings(BLOBSTORE_STORAGES={"default": storage})

    def assert_refused(self, response: httpx.Response) -> None:
        self.assertEqual(response.status_code, 400, response.text)
        if response.request.method != "HEAD":
            self.assertIn("error", response.json())


class RESTRouteTests(HTTPTestCase):
    @KEY_SETTINGS
    @given(key=valid_keys(), alias=st.sampled_from(DATABASES))
    @with_examples(VALID_EXAMPLES, DATABASES)
    def test_every_valid_key_round_trips(self, key: str, alias: str) -> None:
        with self.on(alias):
            run(self.round_trip, key)
        self.assertEqual(snapshot()[alias], ([], 0))

    async def round_trip(self, key: str) -> None:
        data, url = data_for(key), f"/blobs/{path_of(key)}"
        async with self.http() as http:
            put = await http.put(url, content=data)
            self.assertEqual(put.status_code, 201, put.text)
            self.assertEqual(put.json()["key"], key)
            got = await http.get(url)
            self.assertEqual((got.status_code, got.content), (200, data))
            head = await http.head(url)
            self.assertEqual(head.status_code, 200)
            self.assertEqual(head.headers["Content-Length"], str(len(data)))
            listed = await http.get("/blobs/", params={"prefix": key})
            self.assertEqual([blob["key"] for blob in listed.json()["blobs"]], [key])
            self.assertEqual((await http.delete(url)).status_code, 204)
            self.assertEqual((await http.get(url)).status_code, 404)

    @KEY_SETTINGS
    @given(key=invalid_keys(empty=False), alias=st.sampled_from(DATABASES))
    @with_examples(INVALID_EXAMPLES, DATABASES)
    def test_every_invalid_key_is_a_400_and_stores_nothing(self, key: str, alias: str) -> None:
        run(ORMStorage(using=alias).set, "existing", b"kept")
        before = snapshot()
        with self.on(alias):
            run(self.refuse, key)
        self.assertEqual(snapshot(), before)

    async def refuse(self, key: str) -> None:
        url = f"/blobs/{path_of(key)}"
        async with self.http() as http:
            for method in ("PUT", "GET", "HEAD", "DELETE"):
                body = b"x" if method == "PUT" else None
                self.assert_refused(await http.request(method, url, content=body))


@override_settings(BLOBSTORE_PROXYSTORE={"PREFIX": ""})  # ProxyStore's key k is the blob k
class ProxyStoreRouteTests(HTTPTestCase):
    @KEY_SETTINGS
    @given(key=valid_keys(), alias=st.sampled_from(DATABASES))
    @with_examples(VALID_EXAMPLES, DATABASES)
    def test_every_valid_key_round_trips(self, key: str, alias: str) -> None:
        with self.on(alias):
            run(self.round_trip, key)
        self.assertEqual(snapshot()[alias], ([], 0))

    async def round_trip(self, key: str) -> None:
        data, query = data_for(key), f"?key={query_of(key)}"
        async with self.http() as http:
            self.assertEqual((await http.post(f"/set{query}", content=data)).status_code, 200)
            self.assertEqual((await http.get(f"/exists{query}")).json(), {"exists": True})
            got = await http.get(f"/get{query}")
            self.assertEqual((got.status_code, got.content), (200, data))
            self.assertEqual((await http.post(f"/evict{query}")).status_code, 200)
            self.assertEqual((await http.get(f"/exists{query}")).json(), {"exists": False})
            self.assertEqual((await http.get(f"/get{query}")).status_code, 404)

    @KEY_SETTINGS
    @given(key=invalid_keys(), alias=st.sampled_from(DATABASES))
    @with_examples(["", *INVALID_EXAMPLES], DATABASES)
    def test_every_invalid_key_is_a_400_and_stores_nothing(self, key: str, alias: str) -> None:
        run(ORMStorage(using=alias).set, "existing", b"kept")
        before = snapshot()
        with self.on(alias):
            run(self.refuse, key)
        self.assertEqual(snapshot(), before)

    async def refuse(self, key: str) -> None:
        query = f"?key={query_of(key)}"
        async with self.http() as http:
            for method, route in [
                ("POST", "set"),
                ("GET", "get"),
                ("GET", "exists"),
                ("POST", "evict"),
            ]:
                body = b"x" if route == "set" else None
                self.assert_refused(await http.request(method, f"/{route}{query}", content=body))


class AdminTests(KeyTestCase):
    """The admin on the default database: upload under the key, find, view, download, delete."""

    admin: User

    @classmethod
    def setUpTestData(cls) -> None:
        cls.admin = User.objects.create_superuser("admin", password="pw")

    def setup_example(self) -> None:
        super().setup_example()  # type: ignore[no-untyped-call]  # gives each example a new client
        self.client.force_login(self.admin)
        self.async_client.force_login(self.admin)

    @KEY_SETTINGS
    @given(key=valid_keys())
    @with_examples(VALID_EXAMPLES)
    def test_every_valid_key_round_trips(self, key: str) -> None:
        data = data_for(key)
        upload = SimpleUploadedFile("file.bin", data)
        changelist = reverse("admin:blobstore_blob_changelist")
        added = self.client.post(reverse("admin:blobstore_blob_add"), {"file": upload, "key": key})
        self.assertRedirects(added, changelist, fetch_redirect_response=False)
        blob = Blob.objects.only("id", "key").get(key=key)
        found = self.client.get(changelist, {"q": key})
        self.assertIn(blob, found.context["cl"].result_list)
        change = self.client.get(reverse("admin:blobstore_blob_change", args=[blob.pk]))
        self.assertEqual(change.status_code, 200)
        self.assertEqual(change.context["original"].key, key)
        download = reverse("admin:blobstore_blob_download", args=[blob.pk])
        self.assertEqual(async_to_sync(self.download)(download), (200, data))
        history = self.client.get(reverse("admin:blobstore_blob_history", args=[blob.pk]))
        self.assertEqual(history.status_code, 200)
        delete = reverse("admin:blobstore_blob_delete", args=[blob.pk])
        self.assertEqual(self.client.post(delete, {"post": "yes"}).status_code, 302)
        self.assertEqual(snapshot()["default"], ([], 0))

    async def download(self, url: str) -> tuple[int, bytes]:
        response = await self.async_client.get(url)
        assert isinstance(response, StreamingHttpResponse)
        self.assertIn("attachment", response["Content-Disposition"])
        return response.status_code, b"".join([chunk async for chunk in response])

    @KEY_SETTINGS
    @given(key=invalid_keys(empty=False))  # an empty key takes the file's name
    @with_examples(INVALID_EXAMPLES)
    def test_every_invalid_key_is_a_form_error_and_stores_nothing(self, key: str) -> None:
        run(ORMStorage().set, "existing", b"kept")
        before = snapshot()
        upload: UploadedFile[bytes] = SimpleUploadedFile("file.bin", b"x")
        if is_utf8(key):
            response = self.client.post(
                reverse("admin:blobstore_blob_add"), {"key": key, "file": upload}
            )
            self.assertEqual(response.status_code, 200)
            errors = response.context["adminform"].form.errors
        else:
            # A lone surrogate cannot be sent in a request; the form itself refuses it.
            form = BlobAddForm({"key": key}, MultiValueDict({"file": [upload]}), instance=Blob())
            self.assertFalse(form.is_valid())
            errors = form.errors
        self.assertTrue(errors.get("key"), errors)
        self.assertEqual(snapshot(), before)
