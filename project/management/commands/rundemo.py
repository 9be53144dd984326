"""Apply migrations, make sure the demo login exists, and serve the site with uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "admin"


class Command(BaseCommand):
    help = "Start the demo site: migrate, create the demo superuser, serve under uvicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("rundemo creates a superuser with a known password: DEBUG only.")
        call_command("migrate", interactive=False, verbosity=1)
        self.ensure_demo_user()
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo site: http://{host}:{port}/  "
                f"(log in as {DEMO_USERNAME!r} with password {DEMO_PASSWORD!r})"
            )
        )
        uvicorn.run("project.asgi:application", host=host, port=port, lifespan="off")

    def ensure_demo_user(self) -> None:
        users = get_user_model()._default_manager
        if not users.filter(username=DEMO_USERNAME).exists():
            users.create_superuser(DEMO_USERNAME, password=DEMO_PASSWORD)
