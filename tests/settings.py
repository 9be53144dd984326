"""Settings for the test suite.

``default`` is SQLite unless ``DATABASE_URL`` names another database; the
``postgres`` alias is always PostgreSQL (``BLOBSTORE_TEST_POSTGRES_URL``), so
that every run proves ORMStorage on PostgreSQL too.
"""

from __future__ import annotations

import os

import dj_database_url

from project.settings import *  # noqa: F403
from project.settings import SQLITE_OPTIONS, VAR_DIR

# Lets two test runs on one machine use PostgreSQL at once, each with its own databases.
DATABASE_SUFFIX = os.environ.get("BLOBSTORE_TEST_DB_SUFFIX", "")

POSTGRES_URL = os.environ.get(
    "BLOBSTORE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/blobstore"
)

DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{VAR_DIR / 'test-default.sqlite3'}"),
    "postgres": dj_database_url.parse(POSTGRES_URL),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS
    # A file, not Django's in-memory test database, so other processes can share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-default{DATABASE_SUFFIX}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{DATABASE_SUFFIX}"}
DATABASES["postgres"]["TEST"] = {"NAME": f"test_blobstore_postgres{DATABASE_SUFFIX}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Databases as a site may have them, for the system checks' tests: never connected to.
DATABASES["plain_sqlite"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(VAR_DIR / "plain.sqlite3"),
    "TEST": {"NAME": str(VAR_DIR / "test-plain.sqlite3")},
}
DATABASES["wal_sqlite"] = {**DATABASES["plain_sqlite"], "OPTIONS": SQLITE_OPTIONS}
