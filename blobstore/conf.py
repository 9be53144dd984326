"""blobstore's settings, read live from django.conf.settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULT_STORAGES: dict[str, Any] = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {}},
}


class Settings:
    """Each property reads its setting when asked, so override_settings works."""

    @property
    def BLOBSTORE_STORAGES(self) -> Any:
        return getattr(settings, "BLOBSTORE_STORAGES", DEFAULT_STORAGES)


conf = Settings()
