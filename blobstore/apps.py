"""The blobstore app's configuration."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BlobstoreConfig(AppConfig):
    name = "blobstore"
    verbose_name = _("Blob store")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks, the API's and the ProxyStore sub-package's
        # too (it has no AppConfig of its own), and the setting_changed receiver.
        from blobstore import checks, signals  # noqa: F401
        from blobstore.api import checks as api_checks  # noqa: F401
        from blobstore.contrib.proxystore import checks as proxystore_checks  # noqa: F401
