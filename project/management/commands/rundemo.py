"""Apply migrations, make sure the demo login exists, and serve the site with uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

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
        self.migrate()
        if self.ensure_demo_user():
            self.stdout.write(f"Created the demo superuser {DEMO_USERNAME!r}.")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo site: http://{host}:{port}/  "
                f"(log in as {DEMO_USERNAME!r} with password {DEMO_PASSWORD!r}; Ctrl+C stops it)"
            )
        )
        # Warnings and errors only: uvicorn's start-up lines repeat the one above.
        uvicorn.run(
            "project.asgi:application", host=host, port=port, lifespan="off", log_level="warning"
        )

    def migrate(self) -> None:
        """Apply the migrations that the database lacks, with one line instead of one each."""
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        call_command("migrate", interactive=False, verbosity=0)
        if pending:
            database = connections[DEFAULT_DB_ALIAS].settings_dict["NAME"]
            self.stdout.write(
                f"Set up the database {database}: applied {len(pending)} "
                f"migration{'s' if len(pending) != 1 else ''}."
            )

    def ensure_demo_user(self) -> bool:
        """Create the demo superuser unless it exists; return whether it was created."""
        users = get_user_model()._default_manager
        if users.filter(username=DEMO_USERNAME).exists():
            return False
        users.create_superuser(DEMO_USERNAME, password=DEMO_PASSWORD)
        return True
