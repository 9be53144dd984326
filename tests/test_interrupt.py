"""Ctrl-C at any moment of ``manage.py blobstore put`` leaves the old blob or the new one, whole.

Each test replaces a large blob again and again with ``blobstore put`` run as a
program, and sends it SIGINT at a moment spread over the command's work: from
the end of Python's and Django's start-up (until then Ctrl-C is theirs) to the
end of the run (chunks, commit, clean-up), a seeded random moment within each
slice of that time, measured first. Every other run sends a second SIGINT
30 ms after the first, which stops the command at once, as a kill would. After
every run the process must have ended cleanly
(no crash, no traceback), and ``blobstore get`` must give the old blob or the
new one, byte for byte. Every run is checked and the problems are reported
together, so one failure shows how often it happens. Uploads cut off may leave
chunk rows behind; ``purge --older-than 0`` must then remove all of them and
keep the stored blob whole.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import psycopg
import pytest
from django.conf import settings
from django.test import SimpleTestCase

pytestmark = pytest.mark.heavy  # once per test run: see tests/conftest.py

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
SIZE = 40 * MIB
"""The size of both blobs: 40 chunks, long enough to interrupt, short enough to run often."""
KEY = "interrupted/blob"
SEED = 8
CRASHES = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE}
INTERRUPTED = 130
"""The command's exit status when Ctrl-C stopped it."""
AGAIN = 0.03
"""Seconds between the two SIGINTs of every other run."""
TWICE = "Interrupted twice: stopped at once.\n"
"""What the command says when a second Ctrl-C stops its clean-up."""

# Orphan chunk rows: rows of a version that no blob names.
ORM_ORPHANS = """SELECT count(*) FROM blobstore_blobchunk WHERE version NOT IN
    (SELECT version FROM blobstore_blob WHERE version IS NOT NULL)"""
SQLITE_STORAGE_ORPHANS = """SELECT count(*) FROM chunks WHERE version NOT IN
    (SELECT version FROM blobs WHERE version IS NOT NULL)"""

# A settings module for the SQLiteStorage runs: the demo site's, with one more alias.
SQLITE_STORAGE_SETTINGS = """
from project.settings import *  # noqa: F403
from project.settings import BLOBSTORE_STORAGES, VAR_DIR

BLOBSTORE_STORAGES = {
    **BLOBSTORE_STORAGES,
    "file": {
        "BACKEND": "blobstore.storage.SQLiteStorage",
        "OPTIONS": {"database_path": str(VAR_DIR / "blobs.sqlite3")},
    },
}
"""


def _before_the_command(run: Run) -> bool:
    """Return whether Ctrl-C came while Python or Django was starting or ending, not the command.

    At the very end, while Python finalizes, SIGINT kills the process silently.
    """
    # Python's own start-up reports it as a fatal error while importing site, with status 1.
    in_site = run.returncode == 1 and "init_import_site" in run.stderr
    return run.returncode == -signal.SIGINT or (in_site and "KeyboardInterrupt" in run.stderr)


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit
    # that; Python then never raises KeyboardInterrupt. Ctrl-C is what is tested.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True, slots=True)
class Run:
    """What one interrupted put did."""

    delay: float
    returncode: int
    stderr: str
    outcome: str
    """"a" or "b", the blob found whole afterwards, or what else `blobstore get` found."""
    orphans: int
    """How many chunk rows that no blob names the run left behind."""


# The mixin is a test case to the type checker, a plain class to unittest.
if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object


class InterruptedPutMixin(TestCaseMixin):
    """Interrupt `blobstore put KEY FILE` over an old blob, runs times, then purge."""

    runs: ClassVar[int]
    storage: ClassVar[str] = "default"
    directory: ClassVar[tempfile.TemporaryDirectory[str]]
    files: ClassVar[dict[str, Path]]
    digests: ClassVar[dict[str, str]]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.directory = tempfile.TemporaryDirectory()
        cls.addClassCleanup(cls.directory.cleanup)
        # Two blobs of one size, so that every run replaces one with the other.
        cls.files, cls.digests = {}, {}
        for name in ("a", "b"):
            data = os.urandom(SIZE)
            cls.files[name] = Path(cls.directory.name, f"{name}.bin")
            cls.files[name].write_bytes(data)
            cls.digests[name] = hashlib.sha256(data).hexdigest()

    @classmethod
    def environment(cls) -> dict[str, str]:
        """Return the environment of the command's processes."""
        environment = {
            **os.environ,
            "BLOBSTORE_VAR_DIR": cls.directory.name,
            "PYTHONFAULTHANDLER": "1",  # a crash prints every thread's stack
        }
        environment.pop("DATABASE_URL", None)
        environment.pop("DJANGO_SETTINGS_MODULE", None)
        return environment

    def orphans(self) -> int:
        """Return how many chunk rows no blob names."""
        raise NotImplementedError

    def command(self, *arguments: str) -> list[str]:
        """Return the command line of `manage.py blobstore` with arguments, on the storage."""
        return [sys.executable, "manage.py", "blobstore", *arguments, "--storage", self.storage]

    def blobstore(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.command(*arguments),
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            timeout=120,
        )

    def timed(self, *arguments: str) -> float:
        """Run `blobstore ARGUMENTS` to the end; return how long it took."""
        started = time.monotonic()
        done = self.blobstore(*arguments)
        self.assertEqual(done.returncode, 0, done.stderr)
        return time.monotonic() - started

    def put(self, name: str) -> float:
        """Put the file name under KEY uninterrupted; return how long it took."""
        return self.timed("put", KEY, str(self.files[name]))

    def stored(self) -> str:
        """Return "a" or "b" for the blob `blobstore get KEY` gives, or what went wrong."""
        got = self.blobstore("get", KEY)
        if got.returncode != 0:
            return f"get failed ({got.returncode}): {got.stderr.decode(errors='replace')[-300:]}"
        digest = hashlib.sha256(got.stdout).hexdigest()
        names = [name for name, known in self.digests.items() if known == digest]
        return names[0] if names else f"other bytes ({len(got.stdout):,} bytes, SHA-256 {digest})"

    def interrupted_put(
        self, name: str, delay: float, *, again: bool
    ) -> subprocess.CompletedProcess[str]:
        """Start putting the file name under KEY, send SIGINT after delay seconds, wait.

        With again, a second SIGINT follows the first, as an impatient user's
        would, while the first one's clean-up runs.
        """
        process = subprocess.Popen(
            self.command("put", KEY, str(self.files[name])),
            cwd=ROOT,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        for timeout in (delay, AGAIN) if again else (delay,):
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def problems_of(self, run: Run, old: str, new: str) -> list[str]:
        """Return what is wrong with run, which replaced old with new."""
        problems = []
        if run.returncode in CRASHES or (
            "Fatal Python error" in run.stderr and not _before_the_command(run)
        ):
            problems.append(f"crashed with status {run.returncode}")
        elif run.returncode == INTERRUPTED:
            # The command caught Ctrl-C (and perhaps the second one): one line, no traceback.
            if run.stderr not in ("CommandError: Interrupted.\n", TWICE):
                problems.append("interrupted with more than the one-line message")
        elif _before_the_command(run):
            pass
        elif run.returncode != 0:
            problems.append(f"ended with status {run.returncode}")
        if run.outcome not in (old, new):
            problems.append(f"left neither blob whole: {run.outcome}")
        elif run.returncode == 0 and run.outcome != new:
            problems.append("said it stored the new blob, but the old one is there")
        return problems

    def test_sigint_at_any_moment_leaves_one_blob_whole(self) -> None:
        started = time.monotonic()
        # Start-up: as long as Python and Django take to get to the command.
        startup = self.timed("put", "--help")
        self.put("a")
        # Replaces, as every run below is; the quicker one, which fewer runs outlast.
        duration = min(self.put("b"), self.put("a"))
        current = "a"
        rng = random.Random(SEED)
        runs: list[Run] = []
        failures: list[str] = []
        for number in range(self.runs):
            delay = startup + (number + rng.random()) * (duration - startup) / self.runs
            new = "a" if current == "b" else "b"
            orphans = self.orphans()
            done = self.interrupted_put(new, delay, again=number % 2 == 1)
            outcome = self.stored()
            run = Run(delay, done.returncode, done.stderr, outcome, self.orphans() - orphans)
            runs.append(run)
            problems = self.problems_of(run, current, new)
            if problems:
                failures.append(
                    f"run {number} (SIGINT at {delay:.2f} s of {duration:.2f} s, status "
                    f"{run.returncode}): {'; '.join(problems)}\n    stderr: {run.stderr[:2500]}"
                )
            if outcome in ("a", "b"):
                current = outcome
            else:
                self.put(current)  # put a whole blob back, so the next run replaces one
        summary = self.summary(runs, duration, time.monotonic() - started)
        print(summary)  # shown with pytest -s, and in the report of a failure
        self.assertTrue(
            any(run.returncode == INTERRUPTED for run in runs),
            f"no run was interrupted by the command's own handler:\n{summary}",
        )
        self.assertEqual(failures, [], f"\n{summary}\n" + "\n".join(failures))
        # What Ctrl-C left behind (see the summary) goes with purge; the stored blob stays whole.
        purged = self.blobstore("purge", "--older-than", "0")
        self.assertEqual(purged.returncode, 0, purged.stderr)
        self.assertEqual(self.orphans(), 0)
        self.assertEqual(self.stored(), current)
        verified = self.blobstore("verify")
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)

    def summary(self, runs: list[Run], duration: float, elapsed: float) -> str:
        statuses = Counter(run.returncode for run in runs)
        outcomes = [run.outcome if run.outcome in ("a", "b") else "neither" for run in runs]
        return (
            f"{type(self).__name__}: {len(runs)} runs of a {duration:.2f} s put in "
            f"{elapsed:.1f} s; exit statuses {dict(sorted(statuses.items()))}; "
            f"neither blob whole after {outcomes.count('neither')}; runs that left orphan chunk "
            f"rows: {sum(1 for run in runs if run.orphans)} ({sum(run.orphans for run in runs)} "
            "rows in all)"
        )


class ORMStorageOnSQLiteTests(InterruptedPutMixin, SimpleTestCase):
    """The demo site's own setup: ORMStorage on a SQLite file."""

    runs = 20

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        migrate(cls.environment())

    def orphans(self) -> int:
        with sqlite3.connect(Path(self.directory.name, "blobstore.sqlite3")) as db:
            return int(db.execute(ORM_ORPHANS).fetchone()[0])


class SQLiteStorageTests(InterruptedPutMixin, SimpleTestCase):
    """SQLiteStorage (aiosqlite, raw SQL) on a file of its own."""

    runs = 8
    storage = "file"

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        Path(cls.directory.name, "interrupt_settings.py").write_text(SQLITE_STORAGE_SETTINGS)

    @classmethod
    def environment(cls) -> dict[str, str]:
        return {
            **super().environment(),
            "DJANGO_SETTINGS_MODULE": "interrupt_settings",
            "PYTHONPATH": os.pathsep.join([cls.directory.name, str(ROOT)]),
        }

    def orphans(self) -> int:
        with sqlite3.connect(Path(self.directory.name, "blobs.sqlite3")) as db:
            return int(db.execute(SQLITE_STORAGE_ORPHANS).fetchone()[0])


class ORMStorageOnPostgreSQLTests(InterruptedPutMixin, SimpleTestCase):
    """ORMStorage on a PostgreSQL database of the test's own (DATABASE_URL)."""

    runs = 8
    database_url: ClassVar[str]
    admin: ClassVar[psycopg.Connection[tuple[object, ...]]]
    name: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        server = settings.DATABASES["postgres"]
        cls.name = f"test_blobstore_interrupt_{uuid.uuid4().hex[:12]}"
        cls.admin = psycopg.connect(
            host=server["HOST"],
            port=server["PORT"] or 5432,
            user=server["USER"],
            password=server["PASSWORD"],
            dbname="postgres",
            autocommit=True,
        )
        cls.addClassCleanup(cls.admin.close)
        cls.admin.execute(f'CREATE DATABASE "{cls.name}"')
        cls.addClassCleanup(cls.admin.execute, f'DROP DATABASE "{cls.name}" WITH (FORCE)')
        credentials = server["USER"] + (f":{server['PASSWORD']}" if server["PASSWORD"] else "")
        cls.database_url = (
            f"postgres://{credentials}@{server['HOST']}:{server['PORT'] or 5432}/{cls.name}"
        )
        migrate(cls.environment())

    @classmethod
    def environment(cls) -> dict[str, str]:
        return {**super().environment(), "DATABASE_URL": cls.database_url}

    def orphans(self) -> int:
        with psycopg.connect(self.database_url) as db:
            found = db.execute(ORM_ORPHANS).fetchone()
        assert found is not None
        return int(str(found[0]))


def migrate(environment: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity=0"],
        cwd=ROOT,
        env=environment,
        check=True,
        timeout=300,
    )
