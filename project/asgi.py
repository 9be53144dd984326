"""The ASGI application of the blobstore demo site, served by uvicorn."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from blobstore.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Django's handler, with blobstore's API routes on the short path.
application = get_asgi_application()
if settings.DEBUG:
    # runserver serves static files by itself; under uvicorn, Django's own handler does.
    application = ASGIStaticFilesHandler(application)  # type: ignore[assignment]
