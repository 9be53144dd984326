"""A site under uvicorn in a process of its own, on a fresh database, for the race tests.

Unlike :mod:`tests.live`, which serves the demo site as its README does, this
serves any settings module with any ASGI application, so that the host site
of :mod:`tests.hostsite` runs exactly as a new project would.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dj_database_url
import httpx
import psycopg

from tests.live import ROOT, free_port

POSTGRES_URL = os.environ.get(
    "BLOBSTORE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/blobstore"
)

# Makes the token secret, in the site's own process, as `manage.py blobstore token` would.
_PREPARE = (
    "from django.core.management import call_command; "
    "from django.contrib.auth.models import User; "
    "from blobstore.models import APIToken; "
    "call_command('migrate', verbosity=0); "
    "user = User.objects.create_superuser('robot', 'robot@example.org', None); "
    "print(APIToken.objects.create_token(user)[1])"
)

_DEBUG_EXCEPTION = re.compile(r'<pre class="exception_value">(.*?)</pre>', re.DOTALL)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database of this run's own; yield its URL, then drop it."""
    suffix = os.environ.get("BLOBSTORE_TEST_DB_SUFFIX", "")
    name = f"test_blobstore_races{suffix}_{secrets.token_hex(4)}"
    settings = dj_database_url.parse(POSTGRES_URL)
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"],
        password=settings["PASSWORD"], dbname="postgres", autocommit=True,
    ) as server:  # fmt: skip
        server.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RaceSite:
    """settings_module's site served by uvicorn's app, on database_url or SQLite in a temp dir.

    app is an import string; with factory=True uvicorn calls it for the application.
    """

    def __init__(
        self,
        settings_module: str,
        app: str,
        *,
        factory: bool = False,
        workers: int = 1,
        database_url: str | None = None,
    ) -> None:
        self._var_dir = tempfile.TemporaryDirectory(prefix="races-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.command = [
            *(sys.executable, "-m", "uvicorn", app, "--port", str(self.port)),
            *("--workers", str(workers), "--lifespan", "off", "--no-access-log"),
            *(["--factory"] if factory else []),
        ]
        self.environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "BLOBSTORE_VAR_DIR": self._var_dir.name,
            "PYTHONPATH": str(ROOT),
            # A crash of the server (two threads in one SQLite connection) prints its stacks.
            "PYTHONFAULTHANDLER": "1",
        }
        self.environment.pop("DATABASE_URL", None)
        if database_url is not None:
            self.environment["DATABASE_URL"] = database_url
        self.log_path = self.directory / "server.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.secret = ""

    @property
    def directory(self) -> Path:
        return Path(self._var_dir.name)

    def start(self) -> None:
        """Migrate, make an API token, start the server, and wait until it answers."""
        self.secret = self.shell(_PREPARE).split()[-1]
        with self.log_path.open("wb") as log:
            self.server = subprocess.Popen(
                self.command, cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/admin/login/", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the site did not answer within 30 s:\n{self.log()}")

    def shell(self, code: str) -> str:
        """Run code in the site's ``manage.py shell``, a process of its own; return its output."""
        return subprocess.run(
            [sys.executable, "-m", "django", "shell", "-c", code],
            cwd=ROOT, env=self.environment, capture_output=True, text=True, timeout=60,
            check=True,
        ).stdout  # fmt: skip

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(15)
        self._var_dir.cleanup()

    def death(self) -> str | None:
        """Return how the server ended and the end of its log; None while it runs."""
        if self.server is None or self.server.poll() is None:
            return None
        code = self.server.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        log = self.log()
        crash = log.find("Fatal Python error")
        excerpt = log[crash : crash + 2500] if crash >= 0 else log[-2500:]
        return f"the server died ({how}); its log says:\n{excerpt}"

    def log(self) -> str:
        """Return what the server has printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, *, timeout: float = 30) -> httpx.AsyncClient:
        """Return an HTTP client of the site's API routes, with the token."""
        return httpx.AsyncClient(
            base_url=f"{self.url}/blobs/",
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    @property
    def sqlite_path(self) -> Path:
        """The host site's SQLite database file (tests.hostsite.settings puts it there)."""
        return self.directory / "db.sqlite3"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def failure(response: httpx.Response) -> str:
    """Return what an error response says went wrong, in one line."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        pass
    found = _DEBUG_EXCEPTION.search(response.text)  # Django's debug page names the exception
    text = html.unescape(found.group(1)) if found else response.text
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(first_line.split())[:200]
