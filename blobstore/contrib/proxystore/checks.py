"""System checks for BLOBSTORE_PROXYSTORE.

blobstore's AppConfig imports this module in ``ready()``, so the checks run
on every site that lists ``"blobstore"`` in ``INSTALLED_APPS``.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from blobstore.conf import conf
from blobstore.contrib.proxystore import allowed_networks, endpoint_uuid, key_prefix, storage_alias


@register()
def check_proxystore(**kwargs: Any) -> list[CheckMessage]:
    """Report a BLOBSTORE_PROXYSTORE that is not a dict, or holds a bad value."""
    setting = conf.BLOBSTORE_PROXYSTORE
    if not isinstance(setting, dict):
        return [
            Error(f"BLOBSTORE_PROXYSTORE must be a dict, not {setting!r}.", id="blobstore.E008")
        ]
    errors: list[CheckMessage] = []
    for read in (endpoint_uuid, allowed_networks, key_prefix, storage_alias):
        try:
            read()
        except ImproperlyConfigured as error:
            errors.append(Error(str(error), id="blobstore.E008"))
    return errors
