"""Several processes writing one database at once lose nothing and see no lock errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from django.conf import settings
from django.test import SimpleTestCase

from tests.writer import SHARED_KEY, blob_for

pytestmark = pytest.mark.heavy  # once per test run: see tests/conftest.py

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
WRITES = 150


# The mixins are test cases to the type checker, plain classes to unittest.
if TYPE_CHECKING:
    TestCaseMixin = SimpleTestCase
else:
    TestCaseMixin = object


class ConcurrentProcessesMixin(TestCaseMixin):
    """Run WORKERS writer processes against one database, then check every blob."""

    backend: str

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}

    def run_writers(self) -> None:
        start_at = time.time() + 1.5
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.writer",
                    "write",
                    self.backend,
                    str(worker),
                    str(WRITES),
                    str(start_at),
                ],
                cwd=ROOT,
                env=self.environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for worker in range(WORKERS)
        ]
        for worker in workers:
            _, stderr = worker.communicate(timeout=300)
            self.assertNotIn("locked", stderr)
            self.assertEqual(worker.returncode, 0, stderr)

    def stored_digests(self) -> dict[str, str]:
        dumped = subprocess.run(
            [sys.executable, "-m", "tests.writer", "dump", self.backend],
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return json.loads(dumped.stdout)  # type: ignore[no-any-return]

    def test_concurrent_writers_lose_nothing(self) -> None:
        self.run_writers()
        stored = self.stored_digests()
        expected = {
            f"worker-{worker}/{number:05}": hashlib.sha256(blob_for(worker, number)).hexdigest()
            for worker in range(WORKERS)
            for number in range(WRITES)
        }
        shared = stored.pop(SHARED_KEY)
        self.assertEqual(stored, expected)
        last_writes = {
            hashlib.sha256(blob_for(worker, WRITES - 1)).hexdigest() for worker in range(WORKERS)
        }
        self.assertIn(shared, last_writes)


class SQLiteStorageProcessesTests(ConcurrentProcessesMixin, SimpleTestCase):
    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.backend = f"sqlite:{directory.name}/blobs.sqlite3"


class ORMStorageProcessesMixin(ConcurrentProcessesMixin):
    """ORMStorage in worker processes, on a database of the test's own, migrated first."""

    database_url: str

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "DATABASE_URL": self.database_url,
            "BLOBSTORE_VAR_DIR": self.var_dir,
        }

    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.var_dir = directory.name
        self.backend = "orm"
        self.create_database()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity=0"],
            cwd=ROOT,
            env=self.environment(),
            check=True,
            timeout=300,
        )

    def create_database(self) -> None:
        self.database_url = f"sqlite:///{self.var_dir}/orm.sqlite3"


class ORMStorageSQLiteProcessesTests(ORMStorageProcessesMixin, SimpleTestCase):
    pass


class ORMStoragePostgreSQLProcessesTests(ORMStorageProcessesMixin, SimpleTestCase):
    def create_database(self) -> None:
        server = settings.DATABASES["postgres"]
        name = f"test_blobstore_processes_{uuid.uuid4().hex[:12]}"
        admin = psycopg.connect(
            host=server["HOST"],
            port=server["PORT"] or 5432,
            user=server["USER"],
            password=server["PASSWORD"],
            dbname="postgres",
            autocommit=True,
        )
        admin.execute(f'CREATE DATABASE "{name}"')
        self.addCleanup(admin.close)
        self.addCleanup(admin.execute, f'DROP DATABASE "{name}" WITH (FORCE)')
        credentials = server["USER"] + (f":{server['PASSWORD']}" if server["PASSWORD"] else "")
        self.database_url = (
            f"postgres://{credentials}@{server['HOST']}:{server['PORT'] or 5432}/{name}"
        )
