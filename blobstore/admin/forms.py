"""The blob admin's forms: upload a file under a key, or replace a blob's data."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django import forms
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.utils import timezone
from django.utils.formats import localize, number_format
from django.utils.html import avoid_wrapping
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from blobstore.admin.downloads import blob_storage
from blobstore.exceptions import size_limit_advice
from blobstore.models import Blob
from blobstore.sizes import format_size
from blobstore.storage import MAX_KEY_LENGTH, ORMStorage, storages
from blobstore.storage.base import (
    MAX_CONTENT_TYPE_LENGTH,
    OCTET_STREAM,
    Attributes,
    validate_content_type,
    validate_expires,
    validate_key,
    validate_metadata,
)

T = TypeVar("T")


class BlobUploadForm(forms.ModelForm):  # type: ignore[type-arg]
    """Take a file for a blob, refusing one over the storage's size limit, and its attributes."""

    file = forms.FileField(label=_("File"), allow_empty_file=True)
    content_type = forms.CharField(
        label=_("Content type"),
        required=False,
        max_length=MAX_CONTENT_TYPE_LENGTH,
        help_text=_("A media type such as image/png; empty means application/octet-stream."),
    )

    class Meta:
        model = Blob
        fields: list[str] = ["content_type", "metadata", "expires"]

    def clean_content_type(self) -> str:
        return _checked(validate_content_type, self.cleaned_data["content_type"] or None)

    def clean_metadata(self) -> dict[str, str]:
        return _checked(validate_metadata, self.cleaned_data["metadata"])

    def clean_expires(self) -> Any:
        expires = self.cleaned_data["expires"]
        if "expires" not in self.changed_data:
            return expires  # an expiry kept as it was may have passed meanwhile
        return _checked(validate_expires, expires)

    @property
    def attributes(self) -> Attributes:
        """Return the content type, metadata and expiry the form was given."""
        cleaned = self.cleaned_data
        return Attributes(cleaned["content_type"], cleaned["metadata"], cleaned["expires"])

    @property
    def storage(self) -> ORMStorage:
        """Return the storage that keeps the blob this form writes."""
        return blob_storage(self.instance._state.db)

    @property
    def storage_alias(self) -> str | None:
        """Return the BLOBSTORE_STORAGES alias of the storage, or None if none configures it."""
        return next((alias for alias in storages.backends if storages[alias] is self.storage), None)

    def clean_file(self) -> UploadedFile[bytes] | None:
        upload: UploadedFile[bytes] | None = self.cleaned_data["file"]
        limit = self.storage.max_object_size
        if upload is not None and limit is not None and (upload.size or 0) > limit:
            raise ValidationError(
                gettext("The file has %(size)s; blobs here may have at most %(limit)s. %(fix)s")
                % {
                    "size": human_size(upload.size or 0),
                    "limit": human_size(limit),
                    "fix": size_limit_advice(self.storage_alias),
                },
                code="too_large",
            )
        return upload


class BlobAddForm(BlobUploadForm):
    """Upload a file under a key, which defaults to the file's name."""

    key = forms.CharField(
        label=_("Key"),
        required=False,
        strip=False,  # spaces are part of a key
        max_length=MAX_KEY_LENGTH,
        help_text=_("Leave empty to use the file's name."),
    )
    overwrite = forms.BooleanField(
        label=_("Replace an existing blob"),
        required=False,
        help_text=_(
            "Tick to replace a blob already stored under this key. Left unticked, an "
            "existing key is refused with a warning."
        ),
    )

    content_type = forms.CharField(
        label=_("Content type"),
        required=False,
        max_length=MAX_CONTENT_TYPE_LENGTH,
        help_text=_("Leave empty to use the type that the browser gives the file."),
    )

    class Meta(BlobUploadForm.Meta):
        fields = ["key", *BlobUploadForm.Meta.fields]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        upload = cleaned.get("file")
        if upload is not None and not self.data.get("content_type"):
            cleaned["content_type"] = _browser_type(upload)
        if upload is None or "key" not in cleaned:
            return cleaned
        key = cleaned["key"] = cleaned["key"] or upload.name or ""
        try:
            validate_key(key)
        except ValueError:
            self.add_error("key", key_error(key))
            return cleaned
        if not cleaned.get("overwrite"):
            self._refuse_existing(key)
        return cleaned

    def validate_unique(self) -> None:
        """Leave an existing key to clean(), which offers to replace its blob."""

    def _refuse_existing(self, key: str) -> None:
        existing = async_to_sync(self.storage.stat)(key)
        if existing is None:
            return
        self.add_error(
            "key",
            ValidationError(
                gettext(
                    "A blob of %(size)s, updated %(updated)s, is already stored under this "
                    "key. To replace it, tick “Replace an existing blob” and choose the "
                    "file again."
                )
                % {
                    "size": human_size(existing.size),
                    "updated": localize(timezone.localtime(existing.updated)),
                },
                code="exists",
            ),
        )


class BlobChangeForm(BlobUploadForm):
    """Replace a blob's data with a file, or change nothing."""

    file = forms.FileField(
        label=_("Replace the data"),
        required=False,
        allow_empty_file=True,
        help_text=_("Upload a file to store it under this key in place of the current data."),
    )


def _browser_type(upload: UploadedFile[bytes]) -> str:
    """Return the media type the browser gave upload, or the default if it gave none fit."""
    try:
        return validate_content_type(upload.content_type or None)
    except ValueError:
        return OCTET_STREAM


def _checked(validate: Callable[[Any], T], value: Any) -> T:
    """Return what validate makes of value, its TypeError or ValueError as a form error."""
    try:
        return validate(value)
    except (TypeError, ValueError) as invalid:
        raise ValidationError(str(invalid), code="invalid") from invalid


_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def key_error(key: str) -> ValidationError:
    """Return the form error that says why the key rule refuses key."""
    if not key:
        return ValidationError(gettext("Enter a key, or choose a file that has a name."), "empty")
    for pattern, message, code in [
        (
            _CONTROL,
            _("The key holds the control character %(character)s; keys may not."),
            "control",
        ),
        (
            _SURROGATE,
            _("The key holds %(character)s, a lone surrogate, which is not text."),
            "surrogate",
        ),
    ]:
        if found := pattern.search(key):
            character = f"U+{ord(found.group()):04X} (character {found.start() + 1})"
            return ValidationError(message % {"character": character}, code)
    figures = {
        "length": number_format(len(key.encode()), force_grouping=True),
        "limit": number_format(MAX_KEY_LENGTH, force_grouping=True),
    }
    return ValidationError(
        gettext("The key has %(length)s bytes in UTF-8; keys may have at most %(limit)s.")
        % figures,
        "too_long",
    )


def human_size(size: int) -> str:
    """Return size for an admin page: in binary units, never broken across lines."""
    return avoid_wrapping(format_size(size))


def size_in_bytes(size: int) -> str:
    """Return size for an admin page, and in bytes too when it is rounded."""
    return avoid_wrapping(format_size(size, exact=True))
