"""Instructions per request of the API routes, served in process, counted by valgrind.

    .venv/bin/python bench/instructions.py [--requests N]

On this shared 2-core machine a timing moves by 15 % from one minute to the
next; an instruction count does not. Each route (ProxyStore's ``get`` and
``set``, the REST ``GET`` and ``PUT`` with a Bearer token; 1 KiB, DictStorage,
the demo site's settings with DEBUG off) is served through
``blobstore.asgi`` a request at a time, N times, under callgrind; the count of
a run that serves none is taken off and the rest divided by N. valgrind
(Debian's package) is installed with apt-get when missing, as root.

An instruction is not a unit of time (a cache miss costs more than an add),
but the count is what the code asks of the CPU: two commits compared by it
differ by what changed, not by what else the machine did meanwhile. The
REST ratio is the ProxyStore route's count over the REST route's, as a
throughput ratio would be if time followed instructions; ``bench/load.py``
measures the real one.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path; put the repository there instead.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

from bench.load import ensure_installed  # noqa: E402

ROOT = HERE.parent
BODY = b"x" * 1024
WARM_UP = 30
"""Requests of every route served before the counted ones, in every run alike."""
ROUTES = {  # the writes first: the reads read what they wrote
    ("proxystore", "set"): ("POST", "/set", b"key=bench"),
    ("rest", "set"): ("PUT", "/blobs/rest/bench", b""),
    ("proxystore", "get"): ("GET", "/get", b"key=bench"),
    ("rest", "get"): ("GET", "/blobs/rest/bench", b""),
}


def environment(home: Path) -> dict[str, str]:
    """Return the environment of a site on DictStorage whose files are in home."""
    variables = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BLOBSTORE_BENCH_BACKEND": "dict",
        "BLOBSTORE_VAR_DIR": str(home),
        "DJANGO_SUPERUSER_PASSWORD": "bench",
        # Each run hashes strings alike: a random seed moves the counts by a few percent.
        "PYTHONHASHSEED": "0",
    }
    variables.pop("DATABASE_URL", None)
    return variables


def prepare(home: Path) -> None:
    """Migrate the site's database in home and store a superuser's token beside it."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("createsuperuser", "--noinput", "--username=bench", "--email=b@x.org", verbosity=0)
    secret = io.StringIO()
    call_command("blobstore", "token", "bench", stdout=secret, stderr=io.StringIO())
    (home / "token").write_text(secret.getvalue().strip())


def serve(home: Path, counted: tuple[str, str], requests: int) -> None:
    """Serve every route WARM_UP times, then the counted one requests times."""
    from blobstore.asgi import get_asgi_application

    application = get_asgi_application()
    token = (home / "token").read_text()
    scopes = {route: _scope(route, token) for route in ROUTES}

    async def run() -> None:
        for route, scope in scopes.items():
            for _ in range(WARM_UP):
                await _request(application, scope, route)
        for _ in range(requests):
            await _request(application, scopes[counted], counted)

    asyncio.run(run())


def _scope(route: tuple[str, str], token: str) -> dict[str, Any]:
    method, path, query = ROUTES[route]
    headers = [(b"host", b"127.0.0.1")]
    if route[0] == "rest":
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if route[1] == "set":
        headers.append((b"content-length", str(len(BODY)).encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _request(application: Any, scope: dict[str, Any], route: tuple[str, str]) -> None:
    body = BODY if route[1] == "set" else b""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Future()  # the client stays: no disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await application(scope, receive, send)
    if statuses[0] not in (200, 201):
        raise SystemExit(f"{' '.join(route)} answered {statuses[0]}")


def count(valgrind: str, home: Path, route: tuple[str, str], requests: int) -> int:
    """Return the instructions of a run that serves route requests times."""
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--serve", str(home), *route, str(requests)],
        cwd=ROOT, env=environment(home), capture_output=True, text=True,
    )  # fmt: skip
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or collected is None:
        raise SystemExit(f"{' '.join(route)} failed under callgrind:\n{done.stderr[-2000:]}")
    return int(collected.group(1))


def measure(requests: int) -> dict[tuple[str, str], float]:
    """Return the instructions a request of each route, over requests of it."""
    valgrind = ensure_installed("valgrind")
    with tempfile.TemporaryDirectory(prefix="blobstore-instructions-") as directory:
        home = Path(directory)
        subprocess.run(
            [sys.executable, __file__, "--prepare", str(home)],
            cwd=ROOT, env=environment(home), check=True,
        )  # fmt: skip
        print(f"counting {requests} requests a route under callgrind", file=sys.stderr)
        idle = count(valgrind, home, ("proxystore", "set"), 0)
        return {
            route: (count(valgrind, home, route, requests) - idle) / requests for route in ROUTES
        }


def print_table(per_request: dict[tuple[str, str], float]) -> None:
    print("| routes | op | instructions a request | ProxyStore's / REST's |")
    print("|---|---|---|---|")
    for (routes, operation), instructions in per_request.items():
        proxystore = per_request["proxystore", operation]
        ratio = f"{proxystore / instructions:.3f}" if routes == "rest" else "—"
        print(f"| {routes} | {operation} | {instructions:,.0f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="counted requests a route")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.prepare:
        prepare(arguments.prepare)
    elif arguments.serve:
        home, routes, operation, requests = arguments.serve
        serve(Path(home), (routes, operation), int(requests))
    elif arguments.requests < 1:
        parser.error(f"--requests must be at least 1, not {arguments.requests}")
    else:
        print_table(measure(arguments.requests))


if __name__ == "__main__":
    main()
