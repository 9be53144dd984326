"""Signed URLs in Chromium: the demo page's images load, and a browser uploads with a signed PUT."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser import BrowserTestCase, screenshot

# Run by `manage.py shell` against the site's database before it starts.
SEED = """
from django.core.files.base import ContentFile
from project.models import Document
from tests.images import png

Document.objects.create(
    title="Annual report",
    file=ContentFile(b"%PDF-1.4 not really", name="report.pdf"),
    cover=ContentFile(png(120, 80, (200, 40, 40)), name="report.png"),
)
"""


class SignedURLsInBrowserTests(BrowserTestCase):
    seed = SEED

    def setUp(self) -> None:
        # A new context: no session, so only the signature lets the image through.
        context = self.browser.new_context(base_url=self.site.url)
        self.addCleanup(context.close)
        self.page = context.new_page()

    def test_the_demo_page_shows_its_images_through_signed_urls(self) -> None:
        self.page.goto("/documents/")
        image = self.page.get_by_role("img", name="Cover of Annual report")
        expect(image).to_have_attribute("src", _signed_get("/blobs/media/covers/report.png"))
        self.page.wait_for_function("document.images[0].complete")
        size = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        self.assertEqual(size, [120, 80])
        screenshot(self.page, "documents")

    def test_a_tampered_url_does_not_load(self) -> None:
        self.page.goto("/documents/")
        source = self.page.get_by_role("img").get_attribute("src")
        assert source is not None
        loaded = self.page.evaluate(
            """async src => {
                const image = new Image();
                image.src = src;
                try { await image.decode(); return image.naturalWidth; } catch { return 0; }
            }""",
            source.replace("signature=", "signature=x"),
        )
        self.assertEqual(loaded, 0)

    def test_a_browser_uploads_with_a_signed_put(self) -> None:
        url = self.site.manage("blobstore", "url", "uploads/from-browser.txt", "--method", "PUT")
        self.page.goto("/")
        status = self.page.evaluate(
            "async url => (await fetch(url, {method: 'PUT', body: 'sent by Chromium'})).status",
            url.strip(),
        )
        self.assertEqual(status, 201)
        read = self.site.manage("blobstore", "get", "uploads/from-browser.txt")
        self.assertEqual(read, "sent by Chromium")


def _signed_get(path: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(path)}\?method=GET&expires=\d+&signature=[\w-]+$")
