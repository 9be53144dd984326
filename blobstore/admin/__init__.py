"""The admin of blobstore: registers its model admins when Django's admin autodiscovers it."""

from __future__ import annotations

from blobstore.admin.blobs import BlobAdmin
from blobstore.admin.tokens import APITokenAdmin

__all__ = ["APITokenAdmin", "BlobAdmin"]
