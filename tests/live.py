"""Run the demo site under uvicorn in a process of its own, for live tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dj_database_url
import httpx
import psycopg
from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(server: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Return once url answers; raise with the server's log if it exits or stays silent."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log_path.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within 60 s")


class LiveSite:
    """The demo site on a fresh database: SQLite in a temporary directory, or database_url."""

    def __init__(self, database_url: str | None = None, settings: str = "") -> None:
        """settings: Python lines that the site's settings module runs after its own."""
        self._var_dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.environment = {**os.environ, "BLOBSTORE_VAR_DIR": self._var_dir.name}
        self.environment.pop("DATABASE_URL", None)
        if database_url is not None:
            self.environment["DATABASE_URL"] = database_url
        if settings:
            base = self.environment.get("DJANGO_SETTINGS_MODULE", "project.settings")
            module = self.directory / "live_settings.py"
            module.write_text(f"from {base} import *  # noqa: F403\n{settings}\n")
            paths = [self._var_dir.name, str(ROOT), self.environment.get("PYTHONPATH", "")]
            self.environment["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
            self.environment["DJANGO_SETTINGS_MODULE"] = "live_settings"
        self.log_path = self.directory / "server.log"
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        return Path(self._var_dir.name)

    def manage(self, *arguments: str) -> str:
        """Run a manage.py command against the site's database; return its output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout

    def start(self, *, workers: int = 1) -> None:
        """Start `manage.py rundemo`, as the README's demo command does, and wait for it.

        With several workers, uvicorn serves the site's ASGI application instead.
        """
        command = [sys.executable, "manage.py", "rundemo", "--port", str(self.port)]
        if workers > 1:
            command = [
                *(sys.executable, "-m", "uvicorn", "project.asgi:application"),
                *("--port", str(self.port), "--workers", str(workers), "--lifespan", "off"),
            ]
        # A file, not a pipe that nobody reads and that would block the server when full.
        with self.log_path.open("ab") as log:
            self.server = subprocess.Popen(
                command, cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until_serving(self.server, f"{self.url}/admin/login/", self.log_path)

    def log(self) -> str:
        """Return what the server has written to its stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
        self._var_dir.cleanup()


@contextlib.contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """Create an empty PostgreSQL database beside url's; yield its URL, then drop it."""
    settings = dj_database_url.parse(url)
    name = f"blobstore_live_{os.getpid()}_{free_port()}"
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"],
        password=settings["PASSWORD"], dbname="postgres", autocommit=True,
    ) as server:  # fmt: skip
        server.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class LiveAPITestCase(SimpleTestCase):
    """The demo site under uvicorn for the whole class, and self.http with an API token."""

    workers = 1
    site_settings = ""
    """Python lines that the site's settings module runs after its own."""
    site: LiveSite
    secret: str
    _resources: contextlib.ExitStack

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._resources = contextlib.ExitStack()
        cls.site = LiveSite(cls.make_database(cls._resources), cls.site_settings)
        cls._resources.callback(cls.site.stop)
        cls.site.manage("migrate", "--verbosity=0")
        cls.site.environment["DJANGO_SUPERUSER_PASSWORD"] = "pw"
        cls.site.manage("createsuperuser", "--noinput", "--username=robot", "--email=r@x.org")
        cls.secret = cls.site.manage("blobstore", "token", "robot").strip()
        cls.site.start(workers=cls.workers)

    @classmethod
    def make_database(cls, resources: contextlib.ExitStack) -> str | None:
        """Return the URL of the site's database; None for SQLite in a temporary directory."""
        return None

    @classmethod
    def tearDownClass(cls) -> None:
        cls._resources.close()
        super().tearDownClass()

    def setUp(self) -> None:
        super().setUp()
        self.http = httpx.Client(
            base_url=f"{self.site.url}/blobs/",
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=60,
        )
        self.addCleanup(self.http.close)
