"""The demo site's model: documents with a cover image, kept in blobstore through FileField."""

from __future__ import annotations

from django.db import models


class Document(models.Model):
    """A file and its cover image, both stored by the site's default storage (blobstore)."""

    title = models.CharField(max_length=200)
    file = models.FileField(upload_to="documents/")
    cover = models.ImageField(upload_to="covers/", blank=True)
    uploaded = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded"]

    def __str__(self) -> str:
        return self.title
