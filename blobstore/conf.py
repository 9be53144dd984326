"""blobstore's settings, read live from django.conf.settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULT_STORAGES: dict[str, Any] = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {}},
}

ANONYMOUS_ACCESS_CHOICES = (None, "read", "write")


class Settings:
    """Each property reads its setting when asked, so override_settings works."""

    # The names are the settings' own.

    @property
    def BLOBSTORE_STORAGES(self) -> Any:
        return getattr(settings, "BLOBSTORE_STORAGES", DEFAULT_STORAGES)

    @property
    def BLOBSTORE_ANONYMOUS_ACCESS(self) -> Any:
        return getattr(settings, "BLOBSTORE_ANONYMOUS_ACCESS", None)

    @property
    def BLOBSTORE_PROXYSTORE(self) -> Any:
        return getattr(settings, "BLOBSTORE_PROXYSTORE", {})


conf = Settings()
