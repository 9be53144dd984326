"""Test-run options: what each pass of ./dev test runs.

``./dev test`` runs pytest twice, with the ``default`` database on SQLite and
then on PostgreSQL. Only the tests that use ``default`` can tell the two
apart, so the second pass (``BLOBSTORE_TEST_DATABASE_ONLY=1``) runs those
alone; the heavy scenarios choose their databases themselves and run in the
first pass only (``BLOBSTORE_TEST_HEAVY=0`` sets them aside elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from django.test import SimpleTestCase

HEAVY = "heavy"
"""The marker of the fault, load, race, process, browser and docs scenarios."""

DEFAULT_DATABASE = "default_database"
"""The marker, set on collection, of the tests that use the ``default`` database."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{HEAVY}: a fault, load or browser scenario that runs once per test run"
    )
    config.addinivalue_line(
        "markers", f"{DEFAULT_DATABASE}: uses the default database (set on collection)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if uses_default_database(item):
            item.add_marker(DEFAULT_DATABASE)
    if os.environ.get("BLOBSTORE_TEST_HEAVY", "1") == "0":
        deselect(config, items, lambda item: item.get_closest_marker(HEAVY) is not None)
    if os.environ.get("BLOBSTORE_TEST_DATABASE_ONLY", "0") == "1":
        deselect(config, items, lambda item: item.get_closest_marker(DEFAULT_DATABASE) is None)


def uses_default_database(item: pytest.Item) -> bool:
    """Return whether the test may query the default database in this process."""
    test_class = getattr(item, "cls", None)
    if test_class is not None and issubclass(test_class, SimpleTestCase):
        # Django refuses queries to any database a test case does not declare.
        databases = test_class.databases
        return databases == "__all__" or "default" in databases
    marker = item.get_closest_marker("django_db")
    if marker is not None:
        return "default" in (marker.kwargs.get("databases") or ["default"])
    fixtures = getattr(item, "fixturenames", ())
    return "db" in fixtures or "transactional_db" in fixtures


def deselect(
    config: pytest.Config, items: list[pytest.Item], chosen: Callable[[pytest.Item], bool]
) -> None:
    """Set aside the chosen items, and report them as deselected."""
    left_out = [item for item in items if chosen(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not chosen(item)]
