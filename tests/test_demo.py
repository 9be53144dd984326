"""The demo site, started as the README says, serves a login that works."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DemoSiteTests(SimpleTestCase):
    def setUp(self) -> None:
        var_dir = tempfile.TemporaryDirectory()
        self.addCleanup(var_dir.cleanup)
        self.base_url = f"http://127.0.0.1:{free_port()}"
        environment = {**os.environ, "BLOBSTORE_VAR_DIR": var_dir.name}
        environment.pop("DATABASE_URL", None)  # the demo's default: a new SQLite file
        server = subprocess.Popen(
            [sys.executable, "manage.py", "rundemo", "--port", self.base_url.rsplit(":", 1)[1]],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(server.wait, 30)
        self.addCleanup(server.terminate)
        self.client_ = httpx.Client(base_url=self.base_url, follow_redirects=True, timeout=10)
        self.addCleanup(self.client_.close)
        self.wait_for(server)

    def wait_for(self, server: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                self.fail(f"rundemo exited: {server.stdout.read() if server.stdout else b''!r}")
            try:
                self.client_.get("/admin/login/")
                return
            except httpx.TransportError:
                time.sleep(0.2)
        self.fail("the demo site did not answer within 60 s")

    def test_home_leads_to_a_login_that_works(self) -> None:
        page = self.client_.get("/")
        self.assertEqual(page.status_code, 200)
        self.assertIn("/admin/login/", str(page.url))
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None
        logged_in = self.client_.post(
            "/admin/login/?next=/admin/",
            data={"username": "admin", "password": "admin", "csrfmiddlewaretoken": token[1]},
            headers={"Referer": f"{self.base_url}/admin/login/"},
        )
        self.assertEqual(str(logged_in.url), f"{self.base_url}/admin/")
        blobs = self.client_.get("/admin/blobstore/blob/")
        self.assertEqual(blobs.status_code, 200)
        self.assertIn("Select blob to change", blobs.text)

    def test_admin_static_files_are_served(self) -> None:
        stylesheet = self.client_.get("/static/admin/css/base.css")
        self.assertEqual(stylesheet.status_code, 200)
        self.assertIn("text/css", stylesheet.headers["content-type"])
