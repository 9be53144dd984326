"""Run the demo site under uvicorn in a process of its own, for live tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LiveSite:
    """The demo site on a fresh SQLite database in a temporary directory."""

    def __init__(self) -> None:
        self._var_dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.environment = {**os.environ, "BLOBSTORE_VAR_DIR": self._var_dir.name}
        self.environment.pop("DATABASE_URL", None)
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

    def start(self) -> None:
        """Start `manage.py rundemo`, as the README's demo command does, and wait for it."""
        self.server = subprocess.Popen(
            [sys.executable, "manage.py", "rundemo", "--port", str(self.port)],
            cwd=ROOT,
            env=self.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                output = self.server.stdout.read() if self.server.stdout else b""
                raise RuntimeError(f"rundemo exited: {output.decode(errors='replace')}")
            try:
                httpx.get(f"{self.url}/admin/login/", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the demo site did not answer within 60 s")

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
        self._var_dir.cleanup()
