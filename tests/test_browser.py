"""The admin in a real browser: Chromium, driven by Playwright, against the demo site under uvicorn.

Each test leaves screenshots of the pages it visits in var/screenshots/.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Download, expect

from tests.browser import BrowserTestCase, screenshot
from tests.images import png

pytestmark = pytest.mark.heavy  # once per test run: see tests/conftest.py

README = b"Hello from blobstore.\nThis is a text blob.\n"
GUIDE = b"# Guide\n\nRead me.\n"
BIG = random.Random(5).randbytes(2_500_000)  # larger than one stored chunk
LOGO = png(160, 90)
SCRIPT = "<script>window.pwned=1;alert(1)</script>"
EVIL_KEY = "evil/<img src=x onerror=alert(2)>.html"
AWKWARD_KEY = 'it\'s "quoted"/100%/ключ/naïve 😀.txt'

# Run by `manage.py shell` against the site's database before it starts.
SEED = f"""
import datetime, random
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from blobstore.models import Blob
from blobstore.storage import ORMStorage
from tests.images import png

blobs = {{
    "docs/readme.txt": {README!r},
    "docs/guide.md": {GUIDE!r},
    "images/logo.png": png(160, 90),
    "data/random.bin": bytes(range(256)) * 4,
    "data/big.bin": random.Random(5).randbytes(2_500_000),
    {EVIL_KEY!r}: {SCRIPT.encode()!r} + b'<img src=x onerror="window.pwned=2">',
    "evil/fake.png": b"\\x89PNG\\r\\n\\x1a\\n" + {SCRIPT.encode()!r},
    "archive/old.log": b"an old log line\\n",
}}
for key, data in blobs.items():
    async_to_sync(ORMStorage().set)(key, data)
Blob.objects.filter(key="archive/old.log").update(
    updated=timezone.now() - datetime.timedelta(days=40)
)
viewer = User.objects.create_user("viewer", password="viewer", is_staff=True)
viewer.user_permissions.add(Permission.objects.get(codename="view_blob"))
"""


class AdminInBrowserTests(BrowserTestCase):
    seed = SEED

    def setUp(self) -> None:
        context = self.browser.new_context(base_url=self.site.url, accept_downloads=True)
        self.addCleanup(context.close)
        self.page = context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", self.dismiss)

    def dismiss(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def log_in(self, username: str = "admin", password: str = "admin") -> None:
        self.page.goto("/admin/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.page.click("input[type=submit]")
        expect(self.page).to_have_url(f"{self.site.url}/admin/")

    def open_blob(self, key: str) -> None:
        """Search the changelist for key and open its page."""
        self.page.goto("/admin/blobstore/blob/?" + f"q={quote(key)}")
        self.page.get_by_role("link", name=key, exact=True).click()
        expect(self.page.locator(".field-key .readonly")).to_have_text(key)

    def listed(self) -> list[str]:
        return self.page.locator("#result_list th.field-key").all_inner_texts()

    def download(self, start: Any) -> Download:
        with self.page.expect_download() as info:
            start()
        return info.value

    def read(self, download: Download) -> bytes:
        return Path(download.path()).read_bytes()

    def assert_no_script_ran(self) -> None:
        self.assertEqual(self.dialogs, [])
        self.assertEqual(self.page.evaluate("typeof window.pwned"), "undefined")

    def test_home_page_leads_to_the_admin(self) -> None:
        self.page.goto("/")
        expect(self.page.locator(".login")).to_contain_text("admin")
        screenshot(self.page, "home")
        self.page.get_by_role("link", name="Blobs in the admin").click()
        expect(self.page).to_have_url(re.compile(r"/admin/login/"))
        screenshot(self.page, "login")
        self.page.fill("#id_username", "admin")
        self.page.fill("#id_password", "admin")
        self.page.click("input[type=submit]")
        expect(self.page.locator(".blob-totals")).to_have_text(
            re.compile(r"^\d+ blobs, [\d.]+\xa0MiB in all$")
        )
        screenshot(self.page, "changelist")

    def test_browse_search_filter_and_sort(self) -> None:
        self.log_in()
        self.page.goto("/admin/blobstore/blob/")
        self.assertIn("docs/readme.txt", self.listed())
        self.page.fill("#searchbar", "docs/")
        self.page.press("#searchbar", "Enter")
        totals = f"2 blobs, {len(README + GUIDE)}\xa0bytes in all"
        expect(self.page.locator(".blob-totals")).to_have_text(totals)
        self.assertEqual(self.listed(), ["docs/guide.md", "docs/readme.txt"])
        screenshot(self.page, "changelist-search")
        self.page.goto("/admin/blobstore/blob/")
        self.page.locator("#changelist-filter").get_by_text("1 MiB to 10 MiB").click()
        expect(self.page.locator("#result_list th.field-key")).to_have_text(["data/big.bin"])
        screenshot(self.page, "changelist-size-filter")
        self.page.goto("/admin/blobstore/blob/")
        self.page.locator("#changelist-filter").get_by_text("Past 7 days").click()
        expect(self.page.locator(".blob-totals")).to_contain_text("blobs")
        self.assertNotIn("archive/old.log", self.listed())
        self.page.goto("/admin/blobstore/blob/")
        self.page.locator("th.column-human_size a", has_text="Size").click()
        expect(self.page.locator("th.column-human_size")).to_have_class(re.compile("ascending"))
        self.assertEqual(self.listed()[-1], "data/big.bin")
        screenshot(self.page, "changelist-by-size")

    def test_previews_and_download(self) -> None:
        self.log_in()
        self.open_blob("docs/readme.txt")
        expect(self.page.locator("pre.blob-text")).to_have_text(README.decode())
        screenshot(self.page, "change-text")
        self.open_blob("images/logo.png")
        image = self.page.locator("img.blob-image")
        expect(image).to_be_visible()
        self.assertEqual(image.evaluate("img => [img.complete, img.naturalWidth]"), [True, 160])
        screenshot(self.page, "change-image")
        self.open_blob("data/random.bin")
        expect(self.page.locator("pre.blob-hex")).to_contain_text(
            "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
        )
        screenshot(self.page, "change-binary")
        self.open_blob("data/big.bin")
        download = self.download(lambda: self.page.click("a.blob-download"))
        self.assertEqual(download.suggested_filename, "big.bin")
        self.assertEqual(self.read(download), BIG)

    def test_upload_replace_and_delete(self) -> None:
        self.log_in()
        self.page.goto("/admin/blobstore/blob/add/")
        self.page.set_input_files("#id_file", files=[file("hello.txt", b"Hello, upload!")])
        screenshot(self.page, "add")
        self.page.click("input[name=_save]")
        expect(self.page.locator(".messagelist")).to_contain_text("hello.txt")
        self.page.goto("/admin/blobstore/blob/add/")
        self.page.set_input_files("#id_file", files=[file("hello.txt", b"Second version")])
        self.page.click("input[name=_save]")
        expect(self.page.locator(".errorlist")).to_contain_text("is already stored under this key")
        screenshot(self.page, "add-existing-key")
        self.page.set_input_files("#id_file", files=[file("hello.txt", b"Second version")])
        self.page.check("#id_overwrite")
        self.page.click("input[name=_continue]")
        expect(self.page.locator("pre.blob-text")).to_have_text("Second version")
        self.page.set_input_files("#id_file", files=[file("v3.txt", b"Third version")])
        self.page.click("input[name=_continue]")
        expect(self.page.locator("pre.blob-text")).to_have_text("Third version")
        screenshot(self.page, "change-replaced")
        self.page.click("a.deletelink")
        expect(self.page.locator("#content")).to_contain_text("Are you sure")
        screenshot(self.page, "delete-confirmation")
        self.page.click("input[type=submit]")
        expect(self.page.locator(".messagelist")).to_contain_text("deleted successfully")
        self.assertNotIn("hello.txt", self.listed())

    def test_download_selected_as_zip_then_delete_them(self) -> None:
        self.log_in()
        self.page.goto("/admin/blobstore/blob/add/")
        for name in ["tmp/one.txt", "tmp/two.txt"]:
            self.page.goto("/admin/blobstore/blob/add/")
            self.page.set_input_files("#id_file", files=[file("x.txt", name.encode())])
            self.page.fill("#id_key", name)
            self.page.click("input[name=_save]")
        self.page.fill("#searchbar", "tmp/")
        self.page.press("#searchbar", "Enter")
        self.page.check("#action-toggle")
        self.page.select_option("select[name=action]", "download_zip")
        download = self.download(lambda: self.page.click("#changelist-form button[name=index]"))
        archive = zipfile.ZipFile(io.BytesIO(self.read(download)))
        self.assertEqual(
            {name: archive.read(name) for name in archive.namelist()},
            {"tmp/one.txt": b"tmp/one.txt", "tmp/two.txt": b"tmp/two.txt"},
        )
        self.page.check("#action-toggle")
        self.page.select_option("select[name=action]", "delete_selected")
        self.page.click("#changelist-form button[name=index]")
        screenshot(self.page, "delete-selected-confirmation")
        self.page.click("input[type=submit]")
        expect(self.page.locator(".messagelist")).to_contain_text("Successfully deleted 2 blobs")
        self.assertEqual(self.listed(), [])

    def test_a_view_only_user_sees_no_change_controls(self) -> None:
        self.log_in("viewer", "viewer")
        self.page.goto("/admin/blobstore/blob/")
        self.assertIn("docs/readme.txt", self.listed())
        expect(self.page.locator("a.addlink")).to_have_count(0)
        options = self.page.locator("select[name=action] option").all_inner_texts()
        self.assertEqual(options[1:], ["Download selected blobs as a zip"])
        screenshot(self.page, "view-only-changelist")
        self.open_blob("docs/readme.txt")
        expect(self.page.locator("pre.blob-text")).to_contain_text("Hello from blobstore.")
        for control in ["input[type=file]", "input[name=_save]", "a.deletelink"]:
            expect(self.page.locator(control)).to_have_count(0)
        screenshot(self.page, "view-only-change")
        download = self.download(lambda: self.page.click("a.blob-download"))
        self.assertEqual(self.read(download), README)

    def test_html_and_script_in_blobs_never_run(self) -> None:
        self.log_in()
        self.page.goto(f"/admin/blobstore/blob/?q={quote('evil/')}")
        self.assertEqual(self.listed(), [EVIL_KEY, "evil/fake.png"])
        self.assert_no_script_ran()
        self.open_blob(EVIL_KEY)
        expect(self.page.locator("pre.blob-text")).to_contain_text(SCRIPT)
        self.assert_no_script_ran()
        screenshot(self.page, "change-script")
        change_url = self.page.url
        download_url = self.page.locator("a.blob-download").get_attribute("href")
        not_an_image = self.page.goto(change_url.replace("/change/", "/image/"))
        self.assertEqual(not_an_image and not_an_image.status, 404)
        self.assert_no_script_ran()
        self.download(lambda: self.page.evaluate("url => { location.href = url }", download_url))
        self.assert_no_script_ran()
        self.open_blob("evil/fake.png")
        image_url = self.page.locator("img.blob-image").get_attribute("src") or ""
        response = self.page.goto(image_url)
        assert response is not None
        self.assertEqual(response.headers["content-type"], "image/png")
        self.assert_no_script_ran()
        screenshot(self.page, "fake-image-opened")

    def test_an_awkward_key_round_trips_through_admin_urls(self) -> None:
        self.log_in()
        self.page.goto("/admin/blobstore/blob/add/")
        self.page.set_input_files("#id_file", files=[file("a.txt", b"awkward")])
        self.page.fill("#id_key", AWKWARD_KEY)
        self.page.click("input[name=_continue]")
        expect(self.page.locator(".field-key .readonly")).to_have_text(AWKWARD_KEY)
        screenshot(self.page, "change-awkward-key")
        self.open_blob(AWKWARD_KEY)
        download = self.download(lambda: self.page.click("a.blob-download"))
        self.assertEqual(download.suggested_filename, "naïve 😀.txt")
        self.assertEqual(self.read(download), b"awkward")
        self.page.click("a.deletelink")
        self.page.click("input[type=submit]")
        expect(self.page.locator(".messagelist")).to_contain_text("deleted successfully")

    def test_browse_by_folder_and_edit_a_blobs_attributes(self) -> None:
        self.log_in()
        self.page.goto("/admin/blobstore/blob/")
        self.page.get_by_role("link", name="docs/", exact=True).click()
        # expect() waits for the navigation a click starts; reading the list at once would not.
        keys = self.page.locator("#result_list th.field-key")
        expect(keys).to_have_text(["docs/guide.md", "docs/readme.txt"])
        expect(self.page.locator(".blob-folder")).to_contain_text("All folders")
        screenshot(self.page, "changelist-folder")
        self.page.locator(".blob-folder").get_by_role("link", name="All folders").click()
        expect(keys.filter(has_text="images/logo.png")).to_have_count(1)
        self.open_blob("docs/guide.md")
        self.page.fill("#id_content_type", "text/markdown")
        self.page.fill("#id_metadata", '{"owner": "docs-team"}')
        self.page.click("input[name=_continue]")
        expect(self.page.locator(".messagelist")).to_contain_text("changed successfully")
        expect(self.page.locator("#id_content_type")).to_have_value("text/markdown")
        expect(self.page.locator("#id_metadata")).to_contain_text("docs-team")
        screenshot(self.page, "change-attributes")


def file(name: str, data: bytes) -> Any:
    """Describe a file for Playwright's set_input_files."""
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}
