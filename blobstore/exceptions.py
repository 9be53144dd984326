"""Exceptions that blobstore raises."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from blobstore.sizes import format_size


class ObjectSizeExceededError(ValueError):
    """A blob is larger than the storage's ``max_object_size``.

    ``size`` is how many bytes had arrived when the limit was passed: a
    streamed blob is refused before the rest of it is read. ``alias``, when
    given, is the ``BLOBSTORE_STORAGES`` alias whose limit it is, and the
    message then says how to raise it.
    """

    def __init__(self, size: int, max_object_size: int, *, alias: str | None = None) -> None:
        message = f"The blob is larger than the limit of {format_size(max_object_size)}."
        if alias is not None:
            message = f"{message} {size_limit_advice(alias)}"
        super().__init__(message)
        self.size = size
        self.max_object_size = max_object_size
        self.alias = alias


def size_limit_setting(alias: str) -> str:
    """Return the setting that holds the size limit of the storage alias."""
    return f"BLOBSTORE_STORAGES[{alias!r}]['OPTIONS']['max_object_size']"


def size_limit_advice(alias: str | None) -> str:
    """Return the sentence that says how to raise the size limit of the storage alias.

    None stands for a storage that no alias configures, such as the admin's
    own ORMStorage on a database that ``BLOBSTORE_STORAGES`` does not name.
    """
    if alias is None:
        return (
            "Configure this storage in BLOBSTORE_STORAGES with a larger 'max_object_size' "
            "in its OPTIONS (a number of bytes, or None for no limit) to store larger blobs."
        )
    return (
        f"Raise {size_limit_setting(alias)} (a number of bytes, or None for no limit) "
        "to store larger blobs."
    )


class InvalidStorageError(ImproperlyConfigured):
    """``BLOBSTORE_STORAGES`` lacks an alias or does not describe a usable storage.

    ``check_id`` is the id of the system check that reports the same problem,
    or None when the setting is fine but an unknown alias was asked for.
    """

    def __init__(self, message: str, *, check_id: str | None = None) -> None:
        super().__init__(message)
        self.check_id = check_id
