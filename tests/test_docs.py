"""The docs run: docs/embedding.md on a brand-new project, docs/http.md's curl examples live.

The pages' fenced blocks follow the convention that docs/embedding.md
describes under "How this page is tested": the info string names the file a
Python block goes into (``file="..."``, ``replace``, ``variant="..."``), and
marks the shell blocks not to run (``skip``) and the one that serves
(``serve``). ``console`` blocks hold ``$ `` commands and the output each must
print, where ``...`` stands for any text within a line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.test import SimpleTestCase
from playwright.sync_api import Response, expect, sync_playwright

from tests.browser import launch_chromium, screenshot
from tests.live import ROOT, LiveAPITestCase, free_port, wait_until_serving

DOCS = ROOT / "docs"
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
"""Where the pages' examples find the site; the tests rewrite it to a free port."""


@dataclass
class Block:
    """A fenced block of a Markdown page, with the parts of its info string."""

    language: str
    text: str
    line: int
    attributes: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)

    @property
    def runs(self) -> bool:
        return self.language in {"sh", "console"} and "skip" not in self.flags


def blocks(page: Path) -> list[Block]:
    """Return the fenced blocks of page, in order."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    opened: tuple[int, list[str]] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith("```"):
            body.append(line)
            continue
        if opened is None:
            opened, body = (number, shlex.split(line[3:])), []
            continue
        start, info = opened
        block = Block(info[0] if info else "", "\n".join(body) + "\n", start)
        for word in info[1:]:
            name, equals, value = word.partition("=")
            if equals:
                block.attributes[name] = value
            else:
                block.flags.add(word)
        found.append(block)
        opened = None
    assert opened is None, f"{page.name}:{opened[0]}: a fence is never closed"
    return found


@dataclass
class Command:
    """One ``$ `` command of a console block and the lines it must print."""

    text: str
    expected: list[str] = field(default_factory=list)


def console_commands(block: Block) -> list[Command]:
    """Return the commands of a console block, continuation lines joined."""
    commands: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif commands and commands[-1].text.endswith("\\") and not commands[-1].expected:
            commands[-1].text += "\n" + line
        elif commands:
            commands[-1].expected.append(line)
    return commands


def printed_as_shown(expected: list[str], output: str) -> bool:
    """Return whether output is the expected lines, where ``...`` matches any text."""
    printed = output.rstrip().splitlines()
    shown = "\n".join(expected).rstrip().splitlines()
    return len(printed) == len(shown) and all(
        re.fullmatch(".*".join(map(re.escape, pattern.split("..."))), line.rstrip())
        for pattern, line in zip(shown, printed, strict=True)
    )


class Shell:
    """A shell session for a page's commands: the directory and exported variables carry over."""

    def __init__(self, directory: Path, environment: dict[str, str], port: int) -> None:
        self.directory = directory
        self.environment = environment
        self.port = port

    def localized(self, text: str) -> str:
        """Return text with the documented address and port replaced by the live site's."""
        return text.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{self.port}").replace(
            "--port 8000", f"--port {self.port}"
        )

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run script in bash as the page shows it; keep its directory and exports."""
        with tempfile.TemporaryDirectory() as state:
            saved = shlex.quote(state)
            done = subprocess.run(
                [
                    "bash",
                    "-c",
                    f"trap 'pwd > {saved}/cwd; env -0 > {saved}/env' EXIT\n"
                    f"set -eo pipefail\n{self.localized(script)}",
                ],
                cwd=self.directory,
                env=self.environment,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.directory = Path(Path(state, "cwd").read_text().strip())
            exported = Path(state, "env").read_text().split("\0")
        self.environment = dict(entry.split("=", 1) for entry in exported if "=" in entry)
        return done

    def run_block(self, block: Block) -> None:
        """Run a sh block, or each command of a console block checking what it prints."""
        where = f"line {block.line}"
        if block.language == "sh":
            done = self.run(block.text)
            assert done.returncode == 0, f"{where}: {block.text}\n{done.stdout}{done.stderr}"
            return
        for command in console_commands(block):
            done = self.run(command.text)
            assert done.returncode == 0, f"{where}: {command.text}\n{done.stdout}{done.stderr}"
            assert printed_as_shown(command.expected, done.stdout), (
                f"{where}: {command.text}\nprinted:\n{done.stdout}\nthe page shows:\n"
                + "\n".join(command.expected)
            )

    @contextlib.contextmanager
    def serving(self, block: Block) -> Iterator[str]:
        """Run the serve block's command in the background; yield the site's URL once it answers."""
        log_path = self.directory / "server.log"
        with log_path.open("ab") as log:
            server = subprocess.Popen(
                ["bash", "-c", f"exec {self.localized(block.text.strip())}"],
                cwd=self.directory,
                env={**self.environment, "UVICORN_PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{self.port}"
            wait_until_serving(server, f"{url}/admin/login/", log_path)
            yield url
        finally:
            server.terminate()
            server.wait(30)


def shell_environment() -> dict[str, str]:
    """Return the environment of a newcomer's shell: this virtualenv first, no test settings."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH"}
    }
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment["PATH"]])
    return environment


@pytest.mark.heavy
class EmbeddingPageTests(SimpleTestCase):
    """docs/embedding.md, followed to the letter on a project that startproject makes."""

    def setUp(self) -> None:
        workspace = tempfile.TemporaryDirectory()
        self.addCleanup(workspace.cleanup)
        environment = shell_environment()
        environment["PROXYSTORE_HOME"] = str(Path(workspace.name, "proxystore"))
        self.shell = Shell(Path(workspace.name), environment, free_port())
        self.page = (DOCS / "embedding.md").read_text()

    def make_project(self) -> list[Block]:
        """Follow the page up to its serve block; return that block and the rest."""
        page_blocks = blocks(DOCS / "embedding.md")
        serve = next(index for index, block in enumerate(page_blocks) if "serve" in block.flags)
        self.follow(page_blocks[:serve], variant="sqlite")
        return page_blocks[serve:]

    def test_a_new_project_serves_the_api_the_admin_and_proxystore(self) -> None:
        serve, *after = self.make_project()
        with self.shell.serving(serve) as url:
            self.follow(after, variant="sqlite")
            token = self.shell.environment["TOKEN"]
            self.drive_the_api(url, token)
            self.drive_the_admin(url)
            self.follow(blocks(DOCS / "proxystore.md"), variant="sqlite")

    def follow(self, page_blocks: list[Block], variant: str) -> None:
        """Apply the blocks to the project as the page says, in order."""
        for block in page_blocks:
            if block.attributes.get("variant", variant) != variant:
                continue
            if "file" in block.attributes:
                path = self.shell.directory / block.attributes["file"]
                if "replace" in block.flags:
                    path.write_text(block.text)
                else:
                    with path.open("a") as edited:
                        edited.write("\n" + block.text)
            elif block.language == "python" and "run" in block.flags:
                done = subprocess.run(
                    [sys.executable, "-c", self.shell.localized(block.text)],
                    cwd=self.shell.directory,
                    env=self.shell.environment,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                self.assertEqual(done.returncode, 0, f"line {block.line}: {done.stderr}")
            elif block.runs:
                self.shell.run_block(block)

    def drive_the_api(self, url: str, token: str) -> None:
        """Store, list, read and delete a blob over REST with the page's token."""
        with httpx.Client(
            base_url=f"{url}/blobs/", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            self.assertEqual(http.put("docs/one.bin", content=b"\x00\x01").status_code, 201)
            listed = http.get("", params={"prefix": "docs/"}).json()["blobs"]
            self.assertEqual([blob["key"] for blob in listed], ["docs/one.bin"])
            self.assertEqual(http.get("docs/one.bin").content, b"\x00\x01")
            self.assertEqual(http.delete("docs/one.bin").status_code, 204)
            self.assertEqual(http.get("docs/one.bin").status_code, 404)
            self.assertEqual(http.put("docs/kept.txt", content=b"for the admin").status_code, 201)
            self.assertEqual(httpx.get(f"{url}/blobs/").status_code, 401)

    def drive_the_admin(self, url: str) -> None:
        """Log in with the page's credentials; every static file must answer 200."""
        password = re.search(r"DJANGO_SUPERUSER_PASSWORD=(\S+)", self.page)
        username = re.search(r"createsuperuser --noinput --username (\S+)", self.page)
        assert password is not None and username is not None
        statics: list[Response] = []
        failed: list[str] = []
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            context = browser.new_context(base_url=url, accept_downloads=True)
            page = context.new_page()
            page.on("response", lambda r: statics.append(r) if "/static/" in r.url else None)
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.goto("/admin/")
            page.fill("#id_username", username[1])
            page.fill("#id_password", password[1])
            page.click("input[type=submit]")
            page.get_by_role("link", name="Blobs", exact=True).click()
            expect(page.locator("#result_list th.field-key")).to_have_text(["docs/kept.txt"])
            screenshot(page, "docs-embedded-changelist")
            page.get_by_role("link", name="docs/kept.txt", exact=True).click()
            with page.expect_download() as download:
                page.click("a.blob-download")
            self.assertEqual(Path(download.value.path()).read_bytes(), b"for the admin")
            page.click("a.deletelink")
            page.click("input[type=submit]")
            expect(page.locator(".messagelist")).to_contain_text("deleted successfully")
            browser.close()
        self.assertEqual(failed, [])
        self.assertTrue(any(r.url.endswith("/static/admin/css/base.css") for r in statics))
        self.assertEqual({r.status for r in statics}, {200})

    def test_wrong_settings_are_named_with_their_fix(self) -> None:
        self.make_project()
        missing_app = self.check_with('INSTALLED_APPS.remove("blobstore")')
        self.assertNotEqual(missing_app.returncode, 0)
        self.assertEqual(
            missing_app.stderr.strip().splitlines()[-1],
            "django.core.exceptions.ImproperlyConfigured: blobstore is not in INSTALLED_APPS: "
            'add "blobstore" to INSTALLED_APPS in your settings, then run manage.py migrate.',
        )
        without_wal = self.check_with('DATABASES["default"]["OPTIONS"] = {}')
        self.assertEqual(without_wal.returncode, 0)
        self.assertIn(
            "(blobstore.W001) DATABASES['default'] is SQLite without WAL", without_wal.stderr
        )
        self.assertIn(
            "HINT: Set DATABASES['default']['OPTIONS'] = "
            "{'init_command': 'PRAGMA journal_mode=WAL;",
            without_wal.stderr,
        )
        misspelt = self.check_with(
            'BLOBSTORE_STORAGES = {"default": {"BACKEND": "blobstore.storage.ORMStorag"}}'
        )
        self.assertNotEqual(misspelt.returncode, 0)
        self.assertIn(
            "(blobstore.E004) BLOBSTORE_STORAGES['default']['BACKEND'] = "
            "'blobstore.storage.ORMStorag' could not be imported",
            misspelt.stderr,
        )
        self.assertNotIn("Traceback", without_wal.stderr + misspelt.stderr)

    def check_with(self, mistake: str) -> subprocess.CompletedProcess[str]:
        """Run manage.py check on the project's settings with one mistake added."""
        (self.shell.directory / "mysite" / "mistaken.py").write_text(
            f"from mysite.settings import *  # noqa: F403\n{mistake}\n"
        )
        self.shell.environment["DJANGO_SETTINGS_MODULE"] = "mysite.mistaken"
        return self.shell.run("python manage.py check")


@pytest.mark.heavy
class HTTPPageTests(LiveAPITestCase):
    """Every example of docs/http.md, run with curl against the demo site."""

    def test_every_example_prints_what_the_page_shows(self) -> None:
        workspace = tempfile.TemporaryDirectory()
        self.addCleanup(workspace.cleanup)
        environment = {**shell_environment(), "TOKEN": self.secret}
        shell = Shell(Path(workspace.name), environment, self.site.port)
        examples = [block for block in blocks(DOCS / "http.md") if block.runs]
        self.assertGreater(len(examples), 5)
        for block in examples:
            shell.run_block(block)
