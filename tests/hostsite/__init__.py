"""A site as ``django-admin startproject`` makes it, with blobstore added: the race tests' host."""
