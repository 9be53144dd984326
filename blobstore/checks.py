"""System checks for blobstore's settings."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register

from blobstore.exceptions import InvalidStorageError
from blobstore.storage.handler import StorageHandler


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
