"""The host site's ASGI application: Django's own handler, as ``startproject`` writes it."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.hostsite.settings")

application = get_asgi_application()
