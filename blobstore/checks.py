"""System checks for blobstore's storage settings (the API's are in blobstore.api.checks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from blobstore.conf import ANONYMOUS_ACCESS_CHOICES, conf
from blobstore.exceptions import InvalidStorageError
from blobstore.storage.handler import StorageHandler
from blobstore.storage.orm import ORMStorage

SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}
"""The SQLite options that a site serving blobs from SQLite wants (see the README)."""


@register()
def check_storages(**kwargs: Any) -> list[CheckMessage]:
    """Report every alias of BLOBSTORE_STORAGES that does not build a storage."""
    # A handler of its own: building storages here must not cache them for requests.
    handler = StorageHandler()
    try:
        aliases = list(handler.backends)
    except InvalidStorageError as error:
        return [_as_error(error)]
    errors: list[CheckMessage] = []
    for alias in aliases:
        try:
            handler.create_storage(alias)
        except InvalidStorageError as error:
            errors.append(_as_error(error))
    return errors


def _as_error(error: InvalidStorageError) -> Error:
    return Error(str(error), id=error.check_id)


@register()
def check_access(**kwargs: Any) -> list[CheckMessage]:
    """Report a BLOBSTORE_ANONYMOUS_ACCESS that is not one of its choices."""
    access = conf.BLOBSTORE_ANONYMOUS_ACCESS
    if access in ANONYMOUS_ACCESS_CHOICES:
        return []
    return [
        Error(
            f"BLOBSTORE_ANONYMOUS_ACCESS must be one of {ANONYMOUS_ACCESS_CHOICES!r}, "
            f"not {access!r}.",
            id="blobstore.E007",
        )
    ]


@register()
def check_sqlite_journal(**kwargs: Any) -> list[CheckMessage]:
    """Warn about every SQLite database that ORMStorage uses without WAL."""
    handler = StorageHandler()
    try:
        stores = [handler.create_storage(alias) for alias in handler.backends]
    except InvalidStorageError:
        return []  # check_storages reports it
    using = sorted({store.using for store in stores if isinstance(store, ORMStorage)})
    return [
        Warning(
            f"DATABASES[{alias!r}] is SQLite without WAL, and blobstore keeps blobs in it: "
            "every read waits for the writer, and a long download holds up every write "
            "until the writes give up (503).",
            hint=f"Set DATABASES[{alias!r}]['OPTIONS'] = {SQLITE_OPTIONS!r}.",
            id="blobstore.W001",
        )
        for alias in using
        if _sqlite_without_wal(settings.DATABASES.get(alias, {}))
    ]


def _sqlite_without_wal(database: Mapping[str, Any]) -> bool:
    if not str(database.get("ENGINE", "")).endswith("sqlite3"):
        return False
    init_command = str(database.get("OPTIONS", {}).get("init_command", ""))
    return "journal_mode=wal" not in init_command.lower().replace(" ", "")
