"""Real faults against the demo site under uvicorn: no mocks, and never a 500.

PostgreSQL connections terminated by the server (``pg_terminate_backend``)
and a database that refuses connections answer 503 with ``Retry-After``, and
the next request works; SQLite on a small tmpfs that fills up answers 507 and
keeps every earlier blob; 110 slow uploads end with 408 or 503 while other
clients are served.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import dj_database_url
import httpx
import psycopg
import pytest

from blobstore.storage.chunked import CHUNK_SIZE
from blobstore.storage.loop import LOOP_CONNECTIONS
from tests.live import LiveAPITestCase, postgres_database
from tests.settings import POSTGRES_URL

pytestmark = pytest.mark.heavy  # once per test run: see tests/conftest.py

# Persistent connections with health checks, as the demo site's settings have them.
PERSISTENT_CONNECTIONS = (
    "DATABASES['default']['CONN_MAX_AGE'] = 600\n"
    "DATABASES['default']['CONN_HEALTH_CHECKS'] = True\n"
)


def admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    """Return a connection to the PostgreSQL server's maintenance database."""
    params = dj_database_url.parse(POSTGRES_URL)
    return psycopg.connect(
        host=params["HOST"], port=params["PORT"] or 5432, user=params["USER"],
        password=params["PASSWORD"], dbname="postgres", autocommit=True,
    )  # fmt: skip


class LiveFaultTestCase(LiveAPITestCase):
    """Checks of the server's log and of fault responses that every fault test shares."""

    def assert_fault(self, response: httpx.Response, status: int) -> None:
        self.assertEqual(response.status_code, status, response.text[:300])
        self.assertIn("nothing was changed", response.json()["error"])
        if status == 503:
            self.assertGreater(int(response.headers["Retry-After"]), 0)

    def assert_clean_log(self) -> None:
        log = self.site.log()
        for sign in ("Traceback", "Exception in ASGI application", "Internal Server Error"):
            self.assertNotIn(sign, log)
        self.assertNotIn('" 500 ', log)


class PostgreSQLFaultTests(LiveFaultTestCase):
    """The site's PostgreSQL connections terminated, and its database closed to connections."""

    site_settings = PERSISTENT_CONNECTIONS
    database: str

    @classmethod
    def make_database(cls, resources: contextlib.ExitStack) -> str | None:
        url = resources.enter_context(postgres_database(POSTGRES_URL))
        cls.database = url.rsplit("/", 1)[1]
        return url

    def setUp(self) -> None:
        super().setUp()
        self.admin = admin_connection()
        self.addCleanup(self.admin.close)

    def backends(self) -> int:
        """Return how many connections the site has open to its database."""
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
        ).fetchone()
        assert row is not None
        return int(str(row[0]))

    def terminate(self) -> int:
        """Terminate every connection of the site to its database; return how many."""
        rows = self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [self.database],
        ).fetchall()
        return len(rows)

    def wait_for_backends(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while self.backends() < count:
            self.assertLess(time.monotonic(), deadline, f"fewer than {count} connections")
            time.sleep(0.05)

    def test_connections_terminated_between_requests(self) -> None:
        big = os.urandom(2 * CHUNK_SIZE + 5)
        requests: dict[str, Callable[[], httpx.Response]] = {
            "GET": lambda: self.http.get("k"),
            "HEAD": lambda: self.http.head("k"),
            "list": lambda: self.http.get("", params={"prefix": "k"}),
            "PUT": lambda: self.http.put("k", content=b"new"),
            "large PUT": lambda: self.http.put("big", content=big),
            "DELETE": lambda: self.http.delete("gone"),
            "ProxyStore exists": lambda: httpx.get(f"{self.site.url}/exists?key=k"),
            "ProxyStore set": lambda: httpx.post(f"{self.site.url}/set?key=k", content=b"ps"),
        }
        for what, request in requests.items():
            with self.subTest(what):
                self.http.put("k", content=b"old").raise_for_status()
                self.assertGreaterEqual(self.terminate(), 1)  # the idle, persistent one
                first = request()
                if first.status_code == 503:
                    self.assert_fault(first, 503)
                else:
                    self.assertLess(first.status_code, 300, first.text[:300])
                for _ in range(3):  # and every request after it works
                    self.assertEqual(self.http.get("k").status_code, 200)
        self.assert_clean_log()

    def test_connections_terminated_mid_upload(self) -> None:
        self.http.put("kept", content=b"old").raise_for_status()
        body = os.urandom(4 * CHUNK_SIZE)
        head = (
            f"PUT /blobs/kept HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.secret}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.site.port), timeout=30) as client:
            client.sendall(head.encode() + body[: 2 * CHUNK_SIZE + CHUNK_SIZE // 2])
            # The request's own connection and its upload's, which has a chunk written.
            self.wait_for_backends(2)
            time.sleep(0.3)
            self.assertGreaterEqual(self.terminate(), 2)
            with contextlib.suppress(OSError):  # the server may answer before the end
                client.sendall(body[2 * CHUNK_SIZE + CHUNK_SIZE // 2 :])
            status, answer = read_response(client)
        self.assertEqual(status, 503, answer[:300])
        self.assertIn(b"\r\nretry-after: 5\r\n", answer.lower())
        self.assertIn(b"nothing was changed", answer)
        got = self.http.get("kept")
        self.assertEqual((got.status_code, got.content), (200, b"old"))
        self.assertEqual(self.http.put("kept", content=body).status_code, 200)
        self.assertEqual(self.http.get("kept").content, body)
        self.assertIn("answered 503", self.site.log())
        self.assert_clean_log()

    def test_connections_terminated_mid_download(self) -> None:
        blob = os.urandom(12 * CHUNK_SIZE)
        self.http.put("big", content=blob).raise_for_status()
        received = b""
        with contextlib.suppress(httpx.TransportError), self.http.stream("GET", "big") as got:
            self.assertEqual(got.status_code, 200)
            for chunk in got.iter_raw(CHUNK_SIZE):
                if not received:
                    self.assertGreaterEqual(self.terminate(), 1)
                received += chunk
        # Cut short, or whole if the server had read it all: never other bytes.
        self.assertEqual(received, blob[: len(received)])
        self.assertEqual(self.http.get("big").content, blob)
        print(f"\nterminated mid-download: {len(received)} of {len(blob)} bytes received")
        if len(received) < len(blob):
            self.assertIn("GET /blobs/big: response cut short", self.site.log())
        self.assert_clean_log()

    def test_database_closed_to_connections_then_open_again(self) -> None:
        self.http.put("k", content=b"data").raise_for_status()
        self.admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        try:
            self.terminate()
            requests: list[Callable[[], httpx.Response]] = [
                lambda: self.http.get("k"),
                lambda: self.http.put("k", content=b"other"),
                lambda: self.http.put("closed/big", content=os.urandom(2 * CHUNK_SIZE)),
                lambda: httpx.get(f"{self.site.url}/get?key=k"),
            ]
            for request in requests:
                self.assert_fault(request(), 503)
        finally:
            self.admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
        got = self.http.get("k")  # no restart needed
        self.assertEqual((got.status_code, got.content), (200, b"data"))
        self.assertEqual(self.http.get("closed/big").status_code, 404)
        self.assert_clean_log()


class SQLiteDiskFullTests(LiveFaultTestCase):
    """The site's SQLite database on an 8 MiB tmpfs that its blobs fill up."""

    @classmethod
    def make_database(cls, resources: contextlib.ExitStack) -> str | None:
        directory = resources.enter_context(tempfile.TemporaryDirectory())
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", directory], check=True)
        resources.callback(subprocess.run, ["umount", "-l", directory], check=True)
        return f"sqlite:///{directory}/db.sqlite3"

    def test_full_disk_is_507_and_earlier_blobs_stay(self) -> None:
        stored: dict[str, bytes] = {}
        for n in range(64):  # 16 MiB at most, twice the disk
            blob = os.urandom(256 * 1024)
            response = self.http.put(f"b/{n}", content=blob)
            if response.status_code == 507:
                break
            self.assertEqual(response.status_code, 201, response.text[:300])
            stored[f"b/{n}"] = blob
        else:
            self.fail("the disk never filled up")
        self.assert_fault(response, 507)
        self.assertGreater(len(stored), 4)
        # Full: every write is a 507, small, large or through ProxyStore; nothing changes.
        self.assert_fault(self.http.put("small", content=os.urandom(100 * 1024)), 507)
        self.assert_fault(self.http.put("large", content=os.urandom(3 * CHUNK_SIZE)), 507)
        self.assertEqual(
            httpx.post(f"{self.site.url}/set?key=ps", content=os.urandom(300 * 1024)).status_code,
            507,
        )
        for key, blob in stored.items():
            self.assertEqual(self.http.get(quote(key)).content, blob)
        listed = self.http.get("", params={"limit": 1000}).json()["blobs"]
        self.assertEqual(sorted(b["key"] for b in listed), sorted(stored))
        # SQLite can delete on a full disk when its write-ahead log has room.
        deleted = self.http.delete("b/0")
        if deleted.status_code == 507:
            self.assert_fault(deleted, 507)
            self.assertEqual(self.http.get("b/0").content, stored["b/0"])
        else:
            self.assertEqual(deleted.status_code, 204)
            self.assertEqual(self.http.get("b/0").status_code, 404)
            del stored["b/0"]
        faults = [line for line in self.site.log().splitlines() if "answered" in line]
        print(f"\nSQLite on a full tmpfs: {len(stored)} blobs kept, DELETE {deleted.status_code}")
        print("\n".join(faults))
        for key, blob in stored.items():
            self.assertEqual(self.http.get(quote(key)).content, blob)
        self.assertIn("answered 507", self.site.log())
        self.assert_clean_log()


class SlowUploadAttackTests(LiveFaultTestCase):
    """110 uploads that send 2 MiB, then trickle or stall, on PostgreSQL; others go on."""

    site_settings = "BLOBSTORE_BODY_TIMEOUT = 2\n"
    attackers = 110
    database: str

    @classmethod
    def make_database(cls, resources: contextlib.ExitStack) -> str | None:
        url = resources.enter_context(postgres_database(POSTGRES_URL))
        cls.database = url.rsplit("/", 1)[1]
        return url

    def slow_upload(self, number: int) -> int:
        """Send 2 MiB of a 3 MiB body, then a byte every 0.5 s (odd numbers) or nothing."""
        head = (
            f"PUT /blobs/slow/{number} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.secret}\r\nContent-Length: {3 * CHUNK_SIZE}\r\n\r\n"
        )
        pending = memoryview(head.encode() + os.urandom(2 * CHUNK_SIZE))
        with socket.create_connection(("127.0.0.1", self.site.port), timeout=10) as client:
            client.setblocking(False)
            deadline, next_byte = time.monotonic() + 60, 0.0
            while time.monotonic() < deadline:
                writing = [client] if pending or time.monotonic() >= next_byte else []
                readable, writable, _ = select.select([client], writing, [], 0.1)
                if readable:
                    client.setblocking(True)
                    return read_response(client)[0]
                if writable and pending:
                    pending = pending[client.send(pending[: 256 * 1024]) :]
                elif writable and number % 2:
                    with contextlib.suppress(OSError):
                        client.send(b"x")
                    next_byte = time.monotonic() + 0.5
                elif not pending:
                    next_byte = float("inf")
        return 0

    def test_others_are_served_during_110_slow_uploads(self) -> None:
        attack_over = threading.Event()
        peak = [0]

        def other_client(number: int) -> list[int]:
            statuses = []
            with httpx.Client(base_url=self.http.base_url, headers=self.http.headers) as client:
                while not attack_over.is_set():
                    blob = os.urandom(10 * 1024)
                    statuses.append(client.put(f"other/{number}", content=blob).status_code)
                    got = client.get(f"other/{number}")
                    statuses.append(got.status_code if got.content == blob else -1)
                    statuses.append(httpx.get(f"{self.site.url}/exists?key=x").status_code)
            return statuses

        def watch_connections() -> None:
            with admin_connection() as admin:
                while not attack_over.is_set():
                    row = admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
                    ).fetchone()
                    peak[0] = max(peak[0], int(str(row[0])) if row else 0)
                    time.sleep(0.2)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(self.attackers + 6) as pool:
            others = [pool.submit(other_client, n) for n in range(4)]
            pool.submit(watch_connections)
            slow = list(pool.map(self.slow_upload, range(self.attackers)))
            attack_over.set()
            served = [status for other in others for status in other.result()]
        elapsed = time.monotonic() - started
        print(
            f"\n{self.attackers} slow uploads in {elapsed:.1f} s: "
            f"{slow.count(408)} x 408, {slow.count(503)} x 503; "
            f"{len(served)} other requests, all 2xx: {all(200 <= s < 300 for s in served)}; "
            f"at most {peak[0]} connections to PostgreSQL"
        )
        self.assertTrue(set(slow) <= {408, 503}, sorted(set(slow)))
        self.assertGreater(slow.count(408), 0)
        self.assertGreater(len(served), 10)
        self.assertTrue(all(200 <= status < 300 for status in served), sorted(set(served)))
        self.assertEqual(self.http.get("", params={"prefix": "slow/"}).json()["blobs"], [])
        # 8 uploads' own, the site's shared one, the loop's readers, this test's
        # own, and one just closed: its backend is listed until it has exited.
        self.assertLessEqual(peak[0], 8 + 1 + LOOP_CONNECTIONS + 1 + 1)
        self.assertNotIn("too many clients", self.site.log())
        self.assert_clean_log()


def read_response(client: socket.socket) -> tuple[int, bytes]:
    """Read an HTTP response from client until it is whole or the server closes; return it."""
    answer = b""
    deadline = time.monotonic() + 30
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            head, _, body = answer.partition(b"\r\n\r\n")
            if _ and (length := _content_length(head)) is not None and len(body) >= length:
                break
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None
