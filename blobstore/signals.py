"""Receivers that keep blobstore's caches in step with the settings."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from blobstore.storage.handler import storages


@receiver(setting_changed)
def reset_storages(*, setting: str, **kwargs: Any) -> None:
    """Forget the configured storages when BLOBSTORE_STORAGES changes."""
    if setting == "BLOBSTORE_STORAGES":
        storages.reset()
