"""``manage.py blobstore proxystore-config``: the endpoint configuration ProxyStore reads.

The ``blobstore`` command adds this subcommand with :func:`add_arguments` and
runs it with :func:`handle`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from blobstore.contrib.proxystore import endpoint_uuid

NAME = "proxystore-config"
"""The subcommand's name."""

SUMMARY = "Write the ProxyStore endpoint config.toml that lets EndpointConnector find this site."
"""The subcommand's one-line help."""

# ProxyStore's own rule for endpoint names.
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def add_arguments(parser: CommandParser) -> None:
    """Add the subcommand's arguments to its parser."""
    parser.add_argument("name", help="The endpoint's name (letters, digits, - and _).")
    parser.add_argument("--host", required=True, help="The host the site answers on.")
    parser.add_argument("--port", type=int, required=True, help="The site's port.")
    parser.add_argument(
        "--proxystore-home",
        help="Where ProxyStore looks for endpoints (default: $PROXYSTORE_HOME, "
        "else $XDG_DATA_HOME/proxystore or ~/.local/share/proxystore).",
    )


def handle(options: Mapping[str, Any]) -> str:
    """Write the endpoint's config.toml as the parsed options ask; return what to print."""
    name: str = options["name"]
    host: str = options["host"]
    port: int = options["port"]
    if not ENDPOINT_NAME.match(name):
        raise CommandError(f"The endpoint name {name!r} may hold only letters, digits, - and _.")
    if not 0 < port < 65536:
        raise CommandError(f"The port must be from 1 to 65535, not {port}.")
    path = proxystore_home(options["proxystore_home"]) / name / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by manage.py blobstore proxystore-config: a Django site serving\n"
        "# ProxyStore's endpoint API through blobstore.contrib.proxystore.\n"
        f"name = {_toml_string(name)}\n"
        f'uuid = "{endpoint_uuid()}"\n'
        f"host = {_toml_string(host)}\n"
        f"port = {port}\n"
    )
    return f"Wrote {path} for endpoint {endpoint_uuid()}."


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
