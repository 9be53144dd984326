"""ProxyStore's endpoint REST API over blobstore's storage.

ProxyStore clients send no credentials, so these routes answer only the
client addresses in ``BLOBSTORE_PROXYSTORE["ALLOWED_CLIENTS"]`` (IP addresses
or networks; loopback by default), and see only the blobs under
``BLOBSTORE_PROXYSTORE["PREFIX"]`` on the storage alias
``BLOBSTORE_PROXYSTORE["STORAGE"]``. The endpoint's UUID is
``BLOBSTORE_PROXYSTORE["UUID"]``, or one derived from ``SECRET_KEY`` so that it
stays the same across restarts.

A sub-package of the blobstore app, not an app: it has no models, migrations
or templates, so a site enables it with its routes alone
(``path("", include("blobstore.contrib.proxystore.urls"))``) and lists only
``"blobstore"`` in ``INSTALLED_APPS``. blobstore's ``AppConfig.ready()``
registers its system checks (``checks``), and ``manage.py blobstore`` runs its
``proxystore-config`` subcommand (``commands``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from blobstore.conf import conf
from blobstore.storage.base import has_control_character

DEFAULT_ALLOWED_CLIENTS = ("127.0.0.0/8", "::1")
DEFAULT_PREFIX = "proxystore/"
DEFAULT_STORAGE = "default"


def endpoint_uuid() -> uuid.UUID:
    """Return the UUID under which this site serves as a ProxyStore endpoint."""
    configured = _setting().get("UUID")
    if configured is None:
        seed = hashlib.sha256(f"blobstore.proxystore:{settings.SECRET_KEY}".encode()).digest()
        return uuid.UUID(bytes=seed[:16], version=4)
    try:
        named = uuid.UUID(str(configured))
    except ValueError:
        named = None
    # ProxyStore reads every endpoint UUID as version 4, rewriting any other.
    if named is None or named.version != 4:
        raise ImproperlyConfigured(
            f"BLOBSTORE_PROXYSTORE['UUID'] must be a version 4 UUID, not {configured!r}."
        )
    return named


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Return the networks whose clients may use the endpoint routes."""
    clients: Sequence[str] = _setting().get("ALLOWED_CLIENTS", DEFAULT_ALLOWED_CLIENTS)
    try:
        if isinstance(clients, str):
            raise TypeError("a list is wanted, not one string")
        return _networks(tuple(clients))
    except (TypeError, ValueError) as invalid:
        raise ImproperlyConfigured(
            f"BLOBSTORE_PROXYSTORE['ALLOWED_CLIENTS'] must list IP addresses or networks, "
            f"not {clients!r}: {invalid}"
        ) from None


def key_prefix() -> str:
    """Return the prefix that turns ProxyStore's key k into the blob key prefix + k."""
    prefix = _setting().get("PREFIX", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or has_control_character(prefix):
        raise ImproperlyConfigured(
            f"BLOBSTORE_PROXYSTORE['PREFIX'] must be a string with no control character, "
            f"not {prefix!r}."
        )
    return prefix


def storage_alias() -> str:
    """Return the alias of BLOBSTORE_STORAGES that the endpoint routes serve."""
    alias = _setting().get("STORAGE", DEFAULT_STORAGE)
    backends = conf.BLOBSTORE_STORAGES
    # A malformed BLOBSTORE_STORAGES is blobstore.E001's to report.
    if not isinstance(alias, str) or (isinstance(backends, dict) and alias not in backends):
        raise ImproperlyConfigured(
            f"BLOBSTORE_PROXYSTORE['STORAGE'] must name an alias of BLOBSTORE_STORAGES, "
            f"not {alias!r}."
        )
    return alias


@functools.lru_cache(maxsize=8)
def _networks(
    clients: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # Parsed once per value of the setting, not on every request; a tuple, since it is shared.
    return tuple(ipaddress.ip_network(client, strict=False) for client in clients)


def _setting() -> dict[str, Any]:
    setting = conf.BLOBSTORE_PROXYSTORE
    if not isinstance(setting, dict):
        raise ImproperlyConfigured(f"BLOBSTORE_PROXYSTORE must be a dict, not {setting!r}.")
    return setting
