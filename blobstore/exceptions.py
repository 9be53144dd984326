"""Exceptions that blobstore raises."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class ObjectSizeExceededError(ValueError):
    """A blob is larger than the storage's ``max_object_size``."""

    def __init__(self, size: int, max_object_size: int) -> None:
        super().__init__(
            f"The blob has {size} bytes, more than the limit of {max_object_size} bytes."
        )
        self.size = size
        self.max_object_size = max_object_size


class InvalidStorageError(ImproperlyConfigured):
    """``BLOBSTORE_STORAGES`` lacks an alias or does not describe a usable storage.

    ``check_id`` is the id of the system check that reports the same problem,
    or None when the setting is fine but an unknown alias was asked for.
    """

    def __init__(self, message: str, *, check_id: str | None = None) -> None:
        super().__init__(message)
        self.check_id = check_id
