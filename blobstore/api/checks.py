"""System checks for the API's settings: its middleware on the short path, and inline types."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from blobstore.api.asgi import api_middleware_class
from blobstore.api.responses import PASSIVE_TYPES
from blobstore.conf import conf

SECURITY_MIDDLEWARE = "django.middleware.security.SecurityMiddleware"
LOGIN_REQUIRED_MIDDLEWARE = "django.contrib.auth.middleware.LoginRequiredMiddleware"


@register()
def check_api_middleware(**kwargs: Any) -> list[CheckMessage]:
    """Report API middleware that cannot run, and MIDDLEWARE the short path must not skip."""
    try:
        kept = conf.BLOBSTORE_API_MIDDLEWARE
        for path in kept:
            api_middleware_class(path)
    except ImproperlyConfigured as error:
        return [Error(str(error), id="blobstore.E010")]
    return [
        Warning(
            f"On the short path (blobstore.asgi) the API routes skip {path!r}: {risk}",
            hint="List it in BLOBSTORE_API_MIDDLEWARE if it is async-capable and the API "
            "needs it, or silence blobstore.W002 where the site does not use blobstore.asgi.",
            id="blobstore.W002",
        )
        for path in settings.MIDDLEWARE
        if path not in kept and (risk := _skipping_risk(path)) is not None
    ]


def _skipping_risk(path: str) -> str | None:
    """Return what skipping the middleware at path would open, or None if nothing."""
    if path == SECURITY_MIDDLEWARE and getattr(settings, "SECURE_SSL_REDIRECT", False):
        return "SECURE_SSL_REDIRECT is on, and the API would still answer plain HTTP."
    if path == LOGIN_REQUIRED_MIDDLEWARE:
        return (
            "the REST routes authorize each request themselves, but the ProxyStore routes "
            "answer their allowed clients with no login."
        )
    if not path.startswith("django."):
        return "blobstore cannot tell what it does (access rules, request rewriting)."
    return None


@register()
def check_inline_types(**kwargs: Any) -> list[CheckMessage]:
    """Report a BLOBSTORE_INLINE_TYPES that names a type a browser could run as a page."""
    types = conf.BLOBSTORE_INLINE_TYPES
    if isinstance(types, list | tuple | set | frozenset) and all(
        isinstance(name, str) and name in PASSIVE_TYPES for name in types
    ):
        return []
    return [
        Error(
            f"BLOBSTORE_INLINE_TYPES must be a list of passive media types, not {types!r}.",
            hint=f"Choose from {sorted(PASSIVE_TYPES)!r}; every other type is served "
            "as an attachment.",
            id="blobstore.E009",
        )
    ]
