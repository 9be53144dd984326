"""A model with a FileField, and the table that django-db-file-storage keeps files in."""

from __future__ import annotations

from django.db import models


class Upload(models.Model):
    """A file on the site's default storage; the benchmark sets upload_to for each peer."""

    file = models.FileField(upload_to="bench/", max_length=255)

    def __str__(self) -> str:
        return self.file.name or ""


class DBFile(models.Model):
    """Where django-db-file-storage puts a file: base64 text, name and type."""

    bytes = models.TextField()
    filename = models.CharField(max_length=255)
    mimetype = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.filename
