"""blobstore's settings, read live from django.conf.settings."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_STORAGES: dict[str, Any] = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {}},
}

ANONYMOUS_ACCESS_CHOICES = (None, "read", "write")

DEFAULT_MAX_UPLOADS = 8
DEFAULT_BODY_TIMEOUT = 30.0


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

    @property
    def BLOBSTORE_INLINE_TYPES(self) -> Any:
        return getattr(settings, "BLOBSTORE_INLINE_TYPES", ())

    @property
    def BLOBSTORE_API_MIDDLEWARE(self) -> list[str]:
        value = getattr(settings, "BLOBSTORE_API_MIDDLEWARE", [])
        if not isinstance(value, list | tuple) or not all(isinstance(path, str) for path in value):
            raise ImproperlyConfigured(
                f"BLOBSTORE_API_MIDDLEWARE must list import paths, not {value!r}."
            )
        return list(value)

    @property
    def BLOBSTORE_MAX_UPLOADS(self) -> int:
        value = getattr(settings, "BLOBSTORE_MAX_UPLOADS", DEFAULT_MAX_UPLOADS)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImproperlyConfigured(
                f"BLOBSTORE_MAX_UPLOADS must be a whole number of at least 1, not {value!r}."
            )
        return value

    @property
    def BLOBSTORE_BODY_TIMEOUT(self) -> float:
        value = getattr(settings, "BLOBSTORE_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ImproperlyConfigured(
                f"BLOBSTORE_BODY_TIMEOUT must be a number of seconds above 0, not {value!r}."
            )
        return float(value)


conf = Settings()


def require_installed() -> None:
    """Raise ImproperlyConfigured, naming the fix, if blobstore is not in INSTALLED_APPS."""
    # Without it, Django's model metaclass fails deep inside the first import of
    # blobstore's URLs or models, with a message that names no fix.
    if apps.apps_ready and not apps.is_installed("blobstore"):
        raise ImproperlyConfigured(
            'blobstore is not in INSTALLED_APPS: add "blobstore" to INSTALLED_APPS in your '
            "settings, then run manage.py migrate."
        )
