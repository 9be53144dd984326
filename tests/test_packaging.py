"""What `pip install .` installs, and migrations that match the models."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from django.core.management import call_command
from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parent.parent


class PackagingTests(SimpleTestCase):
    databases = {"default", "postgres"}  # makemigrations reads their migration history

    def test_wheel_holds_the_app_alone_with_migrations_and_types(self) -> None:
        with tempfile.TemporaryDirectory() as wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, ROOT],
                check=True,
                timeout=600,
            )
            (wheel,) = Path(wheels).glob("*.whl")
            names = zipfile.ZipFile(wheel).namelist()
        packages = {name.split("/")[0] for name in names if ".dist-info/" not in name}
        self.assertEqual(packages, {"blobstore"})
        self.assertIn("blobstore/py.typed", names)
        self.assertIn("blobstore/migrations/0001_initial.py", names)

    def test_migrations_match_the_models(self) -> None:
        call_command("makemigrations", "blobstore", check=True, dry_run=True, verbosity=0)
