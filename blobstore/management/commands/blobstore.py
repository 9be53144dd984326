"""``manage.py blobstore SUBCOMMAND``: blobstore's command-line tools."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from blobstore.contrib.proxystore import endpoint_uuid
from blobstore.models import APIToken

# ProxyStore's own rule for endpoint names.
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class Command(BaseCommand):
    help = "blobstore's tools: API tokens and ProxyStore endpoint configuration."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True)

        token = subcommands.add_parser(
            "token", help="Create an API token for a user and print it, once."
        )
        token.add_argument("username")
        token.add_argument("--name", default="", help="What the token is for.")

        config = subcommands.add_parser(
            "proxystore-config",
            help="Write the ProxyStore endpoint config.toml that lets EndpointConnector "
            "find this site.",
        )
        config.add_argument("name", help="The endpoint's name (letters, digits, - and _).")
        config.add_argument("--host", required=True, help="The host the site answers on.")
        config.add_argument("--port", type=int, required=True, help="The site's port.")
        config.add_argument(
            "--proxystore-home",
            help="Where ProxyStore looks for endpoints (default: $PROXYSTORE_HOME, "
            "else $XDG_DATA_HOME/proxystore or ~/.local/share/proxystore).",
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if subcommand == "token":
            self.create_token(options["username"], options["name"])
        else:
            self.write_proxystore_config(
                options["name"], options["host"], options["port"], options["proxystore_home"]
            )

    def create_token(self, username: str, name: str) -> None:
        users = get_user_model()._default_manager
        try:
            user = users.get_by_natural_key(username)
        except users.model.DoesNotExist:
            raise CommandError(f"No user is called {username!r}.") from None
        _, secret = APIToken.objects.create_token(user, name)
        self.stderr.write(f"A token for {username!r}; it is shown once, only its digest is stored:")
        self.stdout.write(secret)

    def write_proxystore_config(self, name: str, host: str, port: int, home: str | None) -> None:
        if not ENDPOINT_NAME.match(name):
            raise CommandError(
                f"The endpoint name {name!r} may hold only letters, digits, - and _."
            )
        if not 0 < port < 65536:
            raise CommandError(f"The port must be from 1 to 65535, not {port}.")
        path = proxystore_home(home) / name / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Written by manage.py blobstore proxystore-config: a Django site serving\n"
            "# ProxyStore's endpoint API through blobstore.contrib.proxystore.\n"
            f"name = {_toml_string(name)}\n"
            f'uuid = "{endpoint_uuid()}"\n'
            f"host = {_toml_string(host)}\n"
            f"port = {port}\n"
        )
        self.stdout.write(f"Wrote {path} for endpoint {endpoint_uuid()}.")


def proxystore_home(given: str | None = None) -> Path:
    """Return the directory where ProxyStore keeps endpoint configurations."""
    if given:
        return Path(given).expanduser().resolve()
    if "PROXYSTORE_HOME" in os.environ:
        return Path(os.environ["PROXYSTORE_HOME"]).resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home, "proxystore").resolve()


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
