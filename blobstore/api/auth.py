"""Who makes an API request, and what they may do.

A program sends ``Authorization: Bearer <secret>`` with an :class:`APIToken`;
a browser uses its Django session, and must then pass Django's CSRF check on
unsafe methods. ``BLOBSTORE_ANONYMOUS_ACCESS`` opens reads (``"read"``) or
everything (``"write"``) to anonymous users. A signed URL (:mod:`blobstore.signing`)
grants its one method on its one key to whoever holds it, and nothing else.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import aget_user
from django.contrib.auth.models import AnonymousUser, PermissionsMixin
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from blobstore import signing
from blobstore.conf import conf
from blobstore.models import APIToken

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"

PERMISSIONS = {
    "GET": ["blobstore.view_blob"],
    "HEAD": ["blobstore.view_blob"],
    "PUT": ["blobstore.add_blob", "blobstore.change_blob"],
    "POST": ["blobstore.add_blob", "blobstore.change_blob"],
    "DELETE": ["blobstore.delete_blob"],
}

# Whatever AUTH_USER_MODEL is, with Django's PermissionsMixin; or AnonymousUser.
User = Any


class AccessDenied(Exception):
    """The request may not do what it asks; status is 401 or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def authorize(request: HttpRequest, method: str, key: str | None = None) -> User:
    """Return the user making request if they may use method (on key), or raise AccessDenied."""
    # Most requests have no query string: no QueryDict is built for them.
    if request.META.get("QUERY_STRING") and signing.is_signed(request.GET):
        # The signature alone decides, whoever sends it: it is the credential.
        try:
            signing.check(request.GET, key, method)
        except signing.SignatureError as refused:
            raise AccessDenied(403, str(refused)) from None
        return AnonymousUser()
    user, secret = await _authenticate(request)
    if secret is None and user.is_authenticated and method not in READ_METHODS:
        _check_csrf(request)
    # The user's permissions first: most requests hold them, and then the
    # setting that opens the API to anonymous users need not be read.
    if user.is_authenticated and await _has_perms(user, PERMISSIONS[method], secret):
        return user
    if _anonymous_may(method):
        return user
    if not user.is_authenticated:
        raise AccessDenied(401, "Authentication required: log in or send an API token.")
    needed = " and ".join(PERMISSIONS[method])
    raise AccessDenied(
        403, f"You lack the permission to {method} blobs; an administrator can grant {needed}."
    )


async def _authenticate(request: HttpRequest) -> tuple[User, str | None]:
    """Return the user making request, and the secret of their token if they sent one."""
    # From META: request.headers would parse every header to read this one.
    header = request.META.get("HTTP_AUTHORIZATION")
    if header is None:
        return await _session_user(request), None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AccessDenied(401, "The Authorization header must be 'Bearer <token>'.")
    user = await APIToken.objects.aactive_user(secret.strip())
    if user is None:
        raise AccessDenied(
            401,
            "The API token is invalid or revoked; make a new one in the admin or with "
            "'manage.py blobstore token USERNAME'.",
        )
    return user, secret.strip()


async def _has_perms(user: User, permissions: list[str], secret: str | None) -> bool:
    """Return whether user holds every one of permissions, as their backends decide."""
    if (
        secret is not None
        and not user.is_superuser
        and _decides_as_django_does(type(user))
        and list(settings.AUTHENTICATION_BACKENDS) == [MODEL_BACKEND]
    ):
        # What ModelBackend would answer, in one prepared statement.
        held = await APIToken.objects.aheld_permissions(secret)
        return all(permission in held for permission in permissions)
    return bool(await user.ahas_perms(permissions))


def _decides_as_django_does(user_model: type) -> bool:
    """Return whether user_model asks its backends for permissions as PermissionsMixin does."""
    return issubclass(user_model, PermissionsMixin) and all(
        getattr(user_model, name) is getattr(PermissionsMixin, name)
        for name in ("ahas_perm", "ahas_perms")
    )


async def _session_user(request: HttpRequest) -> User:
    if hasattr(request, "auser"):  # AuthenticationMiddleware ran
        return await request.auser()
    if not hasattr(request, "session"):
        # Served without the site's middleware: open the session as it would.
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return await aget_user(request)


def _anonymous_may(method: str) -> bool:
    access = conf.BLOBSTORE_ANONYMOUS_ACCESS
    return access == "write" or (access == "read" and method in READ_METHODS)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> Any:
        # The reason, not Django's HTML page: the API answers in JSON.
        return reason


def _check_csrf(request: HttpRequest) -> None:
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, None, (), {})  # type: ignore[arg-type]
    if reason:
        raise AccessDenied(
            403, f"CSRF check failed: {reason} Programs should send an API token, not a session."
        )
