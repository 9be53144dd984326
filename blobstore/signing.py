"""Signed URLs: one method on one blob until a time, with no credentials.

A signed URL is the API's URL of a blob with three query parameters:
``method`` (``GET``, which HEAD may use too, or ``PUT``), ``expires`` (a Unix
time) and ``signature``, Django's signature of the three facts and the key,
keyed by ``SECRET_KEY`` (or one of ``SECRET_KEY_FALLBACKS``) and this module's
salt. The API accepts such a URL before it looks for a session or a token:
a valid one grants exactly what it says; one that is expired, altered, or
used on another key or with another method is refused with 403.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import urlencode

from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse

from blobstore.storage.base import validate_key

SALT = "blobstore.signing"
METHODS = ("GET", "PUT")
PARAMETERS = ("method", "expires", "signature")
"""The query parameters of a signed URL, in the order they are written."""

GRANTED_BY = {"GET": "GET", "HEAD": "GET", "PUT": "PUT"}
"""Which grant each request method needs."""


DEFAULT_EXPIRES = 3600
"""How long a signed URL works, in seconds, unless told otherwise."""


class SignatureError(Exception):
    """A signed URL that grants nothing for the request; the message says why."""


def signed_url(key: str, *, method: str = "GET", expires: int = DEFAULT_EXPIRES) -> str:
    """Return the API's path of key with a signature granting method for expires seconds."""
    if method not in METHODS:
        raise ValueError(f"A signed URL grants GET or PUT, not {method!r}.")
    if not isinstance(expires, int) or isinstance(expires, bool) or expires <= 0:
        raise ValueError(f"expires must be a positive number of seconds, not {expires!r}.")
    until = int(time.time()) + expires
    query = {"method": method, "expires": str(until), "signature": _signature(key, method, until)}
    return f"{blob_path(key)}?{urlencode(query)}"


def blob_path(key: str) -> str:
    """Return the path of key under the site's mount of the blobstore API."""
    validate_key(key)
    try:
        return reverse("blobstore:blob", kwargs={"key": key})
    except NoReverseMatch:
        raise ImproperlyConfigured(
            "Blob URLs need the blobstore API in the site's URLconf: "
            "path('blobs/', include('blobstore.urls'))."
        ) from None


def is_signed(query: Mapping[str, str]) -> bool:
    """Return whether a request's query parameters try to use a signature."""
    return any(name in query for name in PARAMETERS)


def check(query: Mapping[str, str], key: str | None, method: str) -> None:
    """Return if the query parameters grant method on key; else raise SignatureError."""
    if key is None:
        raise SignatureError("A signed URL grants access to one blob, not to the list.")
    granted, expires, signature = (query.get(name, "") for name in PARAMETERS)
    if not (granted and expires.isdigit() and signature):
        raise SignatureError("A signed URL needs method, expires and signature.")
    try:
        signing.Signer(salt=SALT).unsign(f"{_message(key, granted, int(expires))}:{signature}")
    except signing.BadSignature:
        raise SignatureError("The signature does not match this URL.") from None
    if int(expires) <= time.time():
        raise SignatureError(
            "The signed URL has expired; ask for a new one ('manage.py blobstore url KEY')."
        )
    if GRANTED_BY.get(method) != granted:
        raise SignatureError(f"The signed URL grants {granted} only, not {method}.")


def _signature(key: str, method: str, expires: int) -> str:
    signed = signing.Signer(salt=SALT).sign(_message(key, method, expires))
    return signed.rpartition(":")[2]


def _message(key: str, method: str, expires: int) -> str:
    # The key goes last, so that no key can make two messages alike.
    return f"{method}\n{expires}\n{key}"
