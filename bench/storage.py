"""Storage benchmark: our backends beside ProxyStore's own, in one run.

    .venv/bin/python bench/storage.py [--quick]

Backends: ProxyStore's DictStorage and SQLiteStorage (a file), and ours:
DictStorage, SQLiteStorage (a file), ORMStorage on a SQLite file (with the demo
site's SQLite options) and ORMStorage on PostgreSQL (a database made for the
run). Figures: 1 KiB set/get/exists/evict operations per second (the median of
rounds that take turns across backends), 50 MiB set/get MiB/s, and the memory
a 50 MiB blob costs: the growth of peak RSS during set, and during get, in
copies of the blob, each measured in a fresh process. Needs PostgreSQL
(BLOBSTORE_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

# Run as a script, this file's folder leads sys.path, where bench/http.py would
# hide the standard library's http package: the repository goes there instead.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import dj_database_url  # noqa: E402
import psycopg  # noqa: E402

MIB = 1024 * 1024
LARGE_MIB = 50
ADMIN_URL = os.environ.get(
    "BLOBSTORE_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["theirs-dict", "theirs-sqlite", "ours-dict", "ours-sqlite", "ours-orm-sqlite",
            "ours-orm-pg"]  # fmt: skip
COMPARED = {  # ours: the ProxyStore backend it is measured against
    "ours-dict": "theirs-dict",
    "ours-sqlite": "theirs-sqlite",
    "ours-orm-sqlite": "theirs-sqlite",
    "ours-orm-pg": "theirs-sqlite",
}


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database for the run; yield its name, then drop it."""
    admin = dj_database_url.parse(ADMIN_URL)
    try:
        server = psycopg.connect(
            host=admin["HOST"], port=admin["PORT"] or 5432, user=admin["USER"],
            password=admin["PASSWORD"], dbname=admin["NAME"], autocommit=True,
        )  # fmt: skip
    except psycopg.OperationalError as error:
        raise SystemExit(f"PostgreSQL is needed at {ADMIN_URL}: {error}") from None
    name = f"{prefix}_{os.getpid()}"
    with server:
        server.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def configure_django(directory: str, pg_name: str) -> None:
    import django
    from django.conf import settings

    from project.settings import SQLITE_OPTIONS

    postgres = dj_database_url.parse(ADMIN_URL)
    postgres["NAME"] = pg_name
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "blobstore"],
        USE_TZ=True,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": f"{directory}/orm.sqlite3",
                "OPTIONS": SQLITE_OPTIONS,
            },
            "postgres": postgres,
        },
    )
    django.setup()


def make_storage(name: str, directory: str, number: int = 0) -> Any:
    """Return a new store of the named backend, with no size limit."""
    from proxystore.endpoint import storage as theirs

    from blobstore import storage as ours

    path = f"{directory}/{name}-{number}.sqlite3"
    factories: dict[str, Callable[[], Any]] = {
        "theirs-dict": lambda: theirs.DictStorage(max_object_size=None),
        "theirs-sqlite": lambda: theirs.SQLiteStorage(path, max_object_size=None),
        "ours-dict": lambda: ours.DictStorage(max_object_size=None),
        "ours-sqlite": lambda: ours.SQLiteStorage(path, max_object_size=None),
        "ours-orm-sqlite": lambda: ours.ORMStorage(max_object_size=None),
        "ours-orm-pg": lambda: ours.ORMStorage(using="postgres", max_object_size=None),
    }
    return factories[name]()


async def ops_per_second(operation: Callable[[str], Awaitable[Any]], keys: list[str]) -> float:
    start = time.perf_counter()
    for key in keys:
        await operation(key)
    return len(keys) / (time.perf_counter() - start)


async def small_round(store: Any, count: int, results: dict[str, list[float]]) -> None:
    value = os.urandom(1024)
    keys = [f"key-{n}" for n in range(count)]

    async def set_(key: str) -> None:
        await store.set(key, value)

    for op, call in (("set", set_), ("get", store.get), ("exists", store.exists),
                     ("evict", store.evict)):  # fmt: skip
        results.setdefault(op, []).append(await ops_per_second(call, keys))


async def large_round(store: Any, blob: bytes, results: dict[str, list[float]]) -> None:
    start = time.perf_counter()
    await store.set("large", blob)
    results.setdefault("set 50 MiB", []).append(LARGE_MIB / (time.perf_counter() - start))
    start = time.perf_counter()
    assert await store.get("large") == blob
    results.setdefault("get 50 MiB", []).append(LARGE_MIB / (time.perf_counter() - start))
    await store.evict("large")


async def measure(directory: str, rounds: int, quick: bool) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {name: {} for name in BACKENDS}
    blob = os.urandom(LARGE_MIB * MIB)
    for number in range(rounds):
        turn = BACKENDS[number % len(BACKENDS) :] + BACKENDS[: number % len(BACKENDS)]
        for name in turn:
            count = (20_000 if quick else 200_000) if name.endswith("dict") else (
                300 if quick else 2_000)  # fmt: skip
            store = make_storage(name, directory, number)
            await small_round(store, count, results[name])
            await large_round(store, blob, results[name])
            await store.close()
    return results


def probe_memory(name: str, directory: str, pg_name: str) -> dict[str, float]:
    """In this fresh process: peak RSS growth, in blob copies, of one 50 MiB set and get."""
    if "orm" in name:
        configure_django(directory, pg_name)
    store = make_storage(name, directory, 99)
    blob = os.urandom(LARGE_MIB * MIB)

    async def run() -> dict[str, float]:
        await store.set("warm", b"x")
        growth = {}
        for phase in ("set", "get"):
            baseline = _reset_peak()
            if phase == "set":
                await store.set("large", blob)
            else:
                returned = await store.get("large")
                assert returned == blob
            growth[phase] = (_peak() - baseline) / (LARGE_MIB * MIB)
        await store.close()
        return growth

    return asyncio.run(run())


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def memory_copies(directory: str, pg_name: str) -> dict[str, dict[str, float]]:
    copies = {}
    for name in BACKENDS:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-probe", name, directory, pg_name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        copies[name] = json.loads(done.stdout)
    return copies


def report(results: dict[str, dict[str, list[float]]], copies: dict[str, dict[str, float]]) -> None:
    ops = ["set", "get", "exists", "evict", "set 50 MiB", "get 50 MiB"]
    print(f"\n{'median':<17}" + "".join(f"{name:>16}" for name in BACKENDS))
    for op in ops:
        unit = "MiB/s" if "MiB" in op else "ops/s"
        values = "".join(f"{statistics.median(results[n][op]):>16,.0f}" for n in BACKENDS)
        print(f"{op + ' ' + unit:<17}{values}")
    for phase in ("set", "get"):
        row = "".join(f"{copies[name][phase]:>16.2f}" for name in BACKENDS)
        print(f"{'copies in ' + phase:<17}{row}")
    print("\nratios, ours / theirs")
    ratio = {}
    for name, other in COMPARED.items():
        ratio[name] = {op: statistics.median(results[name][op]) / statistics.median(results[other][op]) for op in ops}  # fmt: skip # noqa: E501
        print(f"  {name:<16} vs {other:<14}"
              + "  ".join(f"{op} {value:.2f}x" for op, value in ratio[name].items()))  # fmt: skip
    checks = [
        ("our SQLiteStorage set >= 10x theirs", ratio["ours-sqlite"]["set"] >= 10),
        ("our SQLiteStorage get >= 1.0x theirs", ratio["ours-sqlite"]["get"] >= 1.0),
        ("ORMStorage on SQLite get >= 0.5x their SQLite", ratio["ours-orm-sqlite"]["get"] >= 0.5),
        ("ORMStorage on SQLite set >= 2x their SQLite", ratio["ours-orm-sqlite"]["set"] >= 2),
        *((f"DictStorage {op} >= 0.9x theirs", ratio["ours-dict"][op] >= 0.9)
          for op in ("set", "get", "exists", "evict")),
        *((f"{name}: a 50 MiB blob held at most twice (set {copies[name]['set']:.2f}, "
           f"get {copies[name]['get']:.2f})", max(copies[name].values()) <= 2.0)
          for name in BACKENDS if name.startswith("ours")),
    ]  # fmt: skip
    print("\ntargets (issue 2)")
    for text, passed in checks:
        print(f"  {'PASS' if passed else 'MISS'}  {text}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-probe":
        print(json.dumps(probe_memory(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round with fewer keys")
    quick = parser.parse_args().quick
    rounds = 1 if quick else 5
    import sqlite3

    import aiosqlite
    import django

    print(f"python {sys.version.split()[0]}, Django {django.__version__}, aiosqlite "
          f"{aiosqlite.__version__}, psycopg {psycopg.__version__}, SQLite "
          f"{sqlite3.sqlite_version}; {' '.join(sys.argv)}")  # fmt: skip
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    with (
        postgres_database("blobstore_bench") as pg_name,
        tempfile.TemporaryDirectory(dir=var) as directory,
    ):
        configure_django(directory, pg_name)
        from django.core.management import call_command

        for alias in ("default", "postgres"):
            call_command("migrate", database=alias, verbosity=0)
        results = asyncio.run(measure(directory, rounds, quick))
        from django.db import connections

        connections.close_all()
        report(results, memory_copies(directory, pg_name))


if __name__ == "__main__":
    main()
