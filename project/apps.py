"""The demo site's own app: its management commands and its Document model."""

from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "project"
    verbose_name = "blobstore demo site"
