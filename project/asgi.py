"""The ASGI application of the blobstore demo site, served by uvicorn."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

from blobstore.asgi import APIRouter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

django_application = get_asgi_application()
if settings.DEBUG:
    # runserver serves static files by itself; under uvicorn, Django's own handler does.
    django_application = ASGIStaticFilesHandler(django_application)
# blobstore's API routes skip the middleware and stream request bodies.
application = APIRouter(django_application)
