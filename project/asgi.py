"""The ASGI application of the blobstore demo site, served by uvicorn."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_asgi_application()
if settings.DEBUG:
    # runserver serves static files by itself; under uvicorn, Django's own handler does.
    application = ASGIStaticFilesHandler(application)
