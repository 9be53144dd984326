"""The demo site, started as the README says, serves a login that works."""

from __future__ import annotations

import re

import httpx
from django.test import SimpleTestCase

from tests.live import LiveSite


class DemoSiteTests(SimpleTestCase):
    def setUp(self) -> None:
        site = LiveSite()
        self.addCleanup(site.stop)
        site.start()
        self.base_url = site.url
        self.client_ = httpx.Client(base_url=self.base_url, follow_redirects=True, timeout=10)
        self.addCleanup(self.client_.close)

    def test_home_leads_to_a_login_that_works(self) -> None:
        home = self.client_.get("/")
        self.assertEqual(home.status_code, 200)
        self.assertIn("Log in as <strong>admin</strong> with password", home.text)
        self.assertIn('href="/admin/blobstore/blob/"', home.text)
        page = self.client_.get("/admin/blobstore/blob/")
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
