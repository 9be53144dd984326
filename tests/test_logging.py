"""The demo site logs server errors to standard error, with DEBUG off as on, and once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parent.parent

# Requests to the demo site's settings through Django's test client, in a
# process of their own: the site's LOGGING, as configured at start-up, is what
# is tested, not the test suite's.
REQUESTS = """
import logging
import sys

import django

django.setup()

from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path


def fail(request: HttpRequest) -> HttpResponse:
    raise ZeroDivisionError("a bug in a view")


urlpatterns = [path("fail", fail)]

with override_settings(ROOT_URLCONF=__name__):
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")
    statuses = [client.get(route).status_code for route in sys.argv[1:]]
logging.getLogger("blobstore.storage").warning("the database went away")
logging.getLogger("blobstore.storage").debug("details nobody asked for")
print(*statuses)
"""


class ServerErrorLogTests(SimpleTestCase):
    def request(self, *routes: str, debug: bool) -> subprocess.CompletedProcess[str]:
        """Request routes of the demo site in a process of its own; return what it wrote."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "1" if debug else "0",
            "BLOBSTORE_VAR_DIR": directory.name,
            "PYTHONPATH": str(ROOT),
        }
        environment.pop("DATABASE_URL", None)
        return subprocess.run(
            [sys.executable, "-c", REQUESTS, *routes],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def test_a_server_error_is_logged_with_its_traceback_when_debug_is_off(self) -> None:
        done = self.request("/fail", debug=False)
        self.assertEqual(done.stdout, "500\n")
        self.assertRegex(done.stderr, r"ERROR django\.request: Internal Server Error: /fail\n")
        self.assertIn("Traceback (most recent call last):", done.stderr)
        self.assertIn("ZeroDivisionError: a bug in a view", done.stderr)
        self.assertEqual(done.stderr.count("Traceback"), 1)

    def test_client_errors_are_not_logged_when_debug_is_off(self) -> None:
        done = self.request("/no/such/page", debug=False)
        self.assertEqual(done.stdout, "404\n")
        self.assertNotIn("django.request", done.stderr)

    def test_a_server_error_is_logged_once_when_debug_is_on(self) -> None:
        done = self.request("/fail", "/no/such/page", debug=True)
        self.assertEqual(done.stdout, "500 404\n")
        self.assertEqual(done.stderr.count("Traceback"), 1)
        self.assertEqual(done.stderr.count("Internal Server Error: /fail"), 1)

    def test_blobstore_reports_go_to_stderr(self) -> None:
        for debug in (False, True):
            with self.subTest(debug=debug):
                done = self.request(debug=debug)
                self.assertRegex(
                    done.stderr, r"WARNING blobstore\.storage: the database went away\n"
                )
                self.assertNotIn("details nobody asked for", done.stderr)
