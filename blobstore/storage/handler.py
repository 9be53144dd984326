"""The storages configured by the BLOBSTORE_STORAGES setting, one instance per alias."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync
from django.utils.module_loading import import_string

from blobstore.conf import conf
from blobstore.exceptions import InvalidStorageError
from blobstore.storage.base import Storage

DEFAULT_STORAGE_ALIAS = "default"


class StorageHandler:
    """Give the storage configured for an alias, created on first use.

    ``BLOBSTORE_STORAGES`` has the shape of Django's ``STORAGES``: each alias
    maps to a dict with ``BACKEND`` (the dotted path of a class that keeps the
    :class:`~blobstore.storage.Storage` protocol) and optional ``OPTIONS``
    (keyword arguments for its constructor).
    """

    def __init__(self, backends: Mapping[str, Any] | None = None) -> None:
        self._given_backends = backends
        self._backends: Mapping[str, Any] | None = None
        self._storages: dict[str, Storage] = {}

    @property
    def backends(self) -> Mapping[str, Any]:
        """Return the configuration of every alias, after checking its shape."""
        if self._backends is None:
            backends = self._given_backends
            if backends is None:
                backends = conf.BLOBSTORE_STORAGES
            self._backends = _checked_backends(backends)
        return self._backends

    def __getitem__(self, alias: str) -> Storage:
        try:
            return self._storages[alias]
        except KeyError:
            storage = self.create_storage(alias)
            self._storages[alias] = storage
            return storage

    def create_storage(self, alias: str) -> Storage:
        """Return a new instance of the storage configured for alias."""
        try:
            params = self.backends[alias]
        except KeyError:
            raise InvalidStorageError(
                f"Could not find config for {alias!r} in settings.BLOBSTORE_STORAGES."
            ) from None
        return _build(alias, params)

    def reset(self) -> None:
        """Forget the configuration and close every instance, to read the setting again."""
        forgotten = list(self._storages.values())
        self._backends = None
        self._storages = {}
        for storage in forgotten:
            # As Django closes its caches on a change of CACHES: a forgotten
            # SQLiteStorage would keep its connection and thread until collected.
            _close(storage)


def _checked_backends(backends: object) -> Mapping[str, Any]:
    if not isinstance(backends, Mapping):
        raise InvalidStorageError(
            f"settings.BLOBSTORE_STORAGES must be a dict of aliases, not {backends!r}.",
            check_id="blobstore.E001",
        )
    if DEFAULT_STORAGE_ALIAS not in backends:
        raise InvalidStorageError(
            f"settings.BLOBSTORE_STORAGES must configure the {DEFAULT_STORAGE_ALIAS!r} alias; "
            f"it has {sorted(backends)!r}.",
            check_id="blobstore.E002",
        )
    return backends


def _build(alias: str, params: object) -> Storage:
    if not isinstance(params, Mapping) or "BACKEND" not in params:
        raise InvalidStorageError(
            f"BLOBSTORE_STORAGES[{alias!r}] must be a dict with a 'BACKEND' key, not {params!r}.",
            check_id="blobstore.E003",
        )
    backend, options = params["BACKEND"], params.get("OPTIONS", {})
    try:
        if not isinstance(backend, str):
            raise TypeError("it must be the dotted path of a class, a str")
        backend_class = import_string(backend)
    except (ImportError, TypeError) as error:
        raise InvalidStorageError(
            f"BLOBSTORE_STORAGES[{alias!r}]['BACKEND'] = {backend!r} could not be imported: "
            f"{error}",
            check_id="blobstore.E004",
        ) from error
    if not isinstance(options, Mapping):
        raise InvalidStorageError(
            f"BLOBSTORE_STORAGES[{alias!r}]['OPTIONS'] must be a dict, not {options!r}.",
            check_id="blobstore.E005",
        )
    try:
        storage = backend_class(**options)
    except (TypeError, ValueError) as error:
        raise InvalidStorageError(
            f"BLOBSTORE_STORAGES[{alias!r}]: {backend!r} rejected OPTIONS {dict(options)!r}: "
            f"{error}",
            check_id="blobstore.E005",
        ) from error
    if not isinstance(storage, Storage):
        raise InvalidStorageError(
            f"BLOBSTORE_STORAGES[{alias!r}]['BACKEND'] = {backend!r} does not keep the "
            "blobstore.storage.Storage protocol (get, set, exists, evict, close).",
            check_id="blobstore.E006",
        )
    return storage


def _close(storage: Storage) -> None:
    """Close storage: at once, or on this thread's running event loop as soon as it may."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(storage.close)()
        return
    closing = loop.create_task(storage.close())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()
"""The closings under way, kept from the garbage collector until they end."""

storages = StorageHandler()
