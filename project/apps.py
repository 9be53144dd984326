"""The demo site's own app, which holds its management commands."""

from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "blobstore demo site"
