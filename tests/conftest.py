"""Test-run options: heavy scenarios run once per run of ./dev test, not on every database."""

from __future__ import annotations

import os

import pytest

HEAVY = "heavy"
"""The marker of the fault, load, race, process and browser scenarios.

They choose their databases themselves, so the default database does not
change them: ``./dev test`` runs them in its first pass only, and CI in its
first stack only (``BLOBSTORE_TEST_HEAVY=0`` deselects them elsewhere).
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{HEAVY}: a fault, load or browser scenario that runs once per test run"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("BLOBSTORE_TEST_HEAVY", "1") != "0":
        return
    heavy = [item for item in items if item.get_closest_marker(HEAVY)]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker(HEAVY)]
