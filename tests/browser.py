"""Debian's Chromium driven by Playwright, for tests of the admin in a real browser."""

from __future__ import annotations

from pathlib import Path

from django.test import SimpleTestCase
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.live import ROOT, LiveSite

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's package; .ci/run installs it. Playwright's own browser downloads are not used."""

CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SCREENSHOTS = ROOT / "var" / "screenshots"
"""Where each browser test leaves a screenshot of every page it visits, for people to look at."""


def launch_chromium(playwright: Playwright) -> Browser:
    """Start headless Chromium, or fail saying how to install it."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does).")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def screenshot(page: Page, name: str) -> None:
    """Save the whole page as SCREENSHOTS/name.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


class BrowserTestCase(SimpleTestCase):
    """The demo site under uvicorn, migrated and seeded with seed, and Chromium for the class."""

    seed = ""
    """Python that `manage.py shell` runs once the database is migrated."""
    site: LiveSite
    playwright: Playwright
    browser: Browser

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.site = LiveSite()
        cls.addClassCleanup(cls.site.stop)
        cls.site.manage("migrate", "--verbosity=0")
        if cls.seed:
            cls.site.manage("shell", "--command", cls.seed)
        cls.site.start()
        cls.playwright = sync_playwright().start()
        cls.addClassCleanup(cls.playwright.stop)
        cls.browser = launch_chromium(cls.playwright)
        cls.addClassCleanup(cls.browser.close)
