"""Large-blob benchmark: 100 MiB and 1 GiB, streamed, beside ProxyStore's endpoint, in one run.

    .venv/bin/python bench/large.py [--quick]

Over HTTP: this site (``project.asgi`` under uvicorn, ``bench.settings``, with
ORMStorage and no size limit) on a SQLite file and on PostgreSQL (a database
made for the run), driven by httpx on the REST route ``PUT``/``GET
/blobs/<key>`` with a token; and ProxyStore's own ``proxystore-endpoint`` with
its DictStorage and its SQLite storage (``--persist``), driven by the same
client on ``POST /set`` and ``GET /get``. The client never holds a blob: it
uploads a random 1 MiB block over and over (with ``Content-Length``) and
checks the SHA-256 of what comes back as it arrives. Through the storage API:
``ORMStorage.write`` and ``ORMStorage.stream`` in a process of their own, on
SQLite and on PostgreSQL.

Figures: MiB/s (the median of rounds that take turns across servers) and the
growth of each server's peak resident memory during one transfer (the peak is
reset before each). ProxyStore's endpoints take 100 MiB only: they keep a blob
whole in memory. ``--quick``: 100 MiB only, one round. Needs PostgreSQL
(BLOBSTORE_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path, where bench/http.py would
# hide the standard library's http package: the repository goes there instead.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from concurrent.futures import Future, ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote  # noqa: E402

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.http import Server, free_port  # noqa: E402
from bench.storage import ADMIN_URL, postgres_database  # noqa: E402

MIB = 1024 * 1024
BLOCK = os.urandom(MIB)
"""What every upload repeats: random, so that nothing on the way can compress it."""

SIZES = {"100 MiB": 100, "1 GiB": 1024}
RSS_LIMIT_MIB = 128
"""Issue 4: the most a server's peak RSS may grow while it moves 1 GiB."""

API_BACKENDS = {"api-orm-sqlite": "default", "api-orm-pg": "postgres"}


def body(mib: int) -> Iterator[bytes]:
    """Yield the upload of mib MiB: BLOCK, mib times."""
    for _ in range(mib):
        yield BLOCK


_DIGESTS: dict[int, str] = {}


def expected_digest(mib: int) -> str:
    """Return the SHA-256 of body(mib)."""
    if mib not in _DIGESTS:
        digest = hashlib.sha256()
        for block in body(mib):
            digest.update(block)
        _DIGESTS[mib] = digest.hexdigest()
    return _DIGESTS[mib]


class Digest:
    """A SHA-256 computed on a thread of its own, in order, while the caller reads on.

    hashlib lets go of the GIL for large updates, so checking the bytes costs
    the reader little of its time.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1)
        self._last: Future[None] | None = None
        self.size = 0

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self._last = self._pool.submit(self._digest.update, data)

    def hexdigest(self) -> str:
        self._pool.shutdown(wait=True)
        return self._digest.hexdigest()


# Peak resident memory of a process: reset it, then read how far it rose.


def reset_peak(pid: int | str = "self") -> int:
    """Make the process's peak RSS its current RSS; return that, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmRSS")


def peak(pid: int | str = "self") -> int:
    """Return the process's peak RSS, in bytes."""
    return _status(pid, "VmHWM")


def _status(pid: int | str, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(name)


class TransferFailed(Exception):
    """A transfer did not answer 200/201, or brought back other bytes."""


@dataclass
class Site(Server):
    """A server of bench/http.py, on the database database_url names (SQLite without one)."""

    database_url: str | None = None
    figures: dict[str, list[float]] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        environment.pop("DATABASE_URL", None)
        if self.database_url:
            environment["DATABASE_URL"] = self.database_url
        return environment

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def route(self, key: str) -> tuple[str, dict[str, str]]:
        """Return the URL and query of key: our REST route, or their endpoint's."""
        if self.kind == "ours":
            return f"{self.url}/blobs/{quote(key, safe='')}", {}
        return self.url, {"key": key}

    def put(self, client: httpx.Client, key: str, mib: int) -> None:
        """Upload mib MiB under key; record MiB/s and the server's peak RSS growth."""
        url, params = self.route(key)
        method, url = ("PUT", url) if self.kind == "ours" else ("POST", f"{url}/set")
        request = client.build_request(
            method,
            url,
            params=params,
            content=body(mib),
            headers={**self.headers, "Content-Length": str(mib * MIB)},
        )
        baseline = reset_peak(self.pid)
        start = time.perf_counter()
        response = client.send(request)
        elapsed = time.perf_counter() - start
        if response.status_code not in (200, 201):
            raise TransferFailed(
                f"{self.label}: PUT {mib} MiB: {response.status_code} {response.text}"
            )
        self.record_transfer("PUT", mib, elapsed, baseline)

    def get(self, client: httpx.Client, key: str, mib: int) -> None:
        """Download key, checking its bytes; record MiB/s and the server's peak RSS growth."""
        url, params = self.route(key)
        url = url if self.kind == "ours" else f"{url}/get"
        digest = Digest()
        baseline = reset_peak(self.pid)
        start = time.perf_counter()
        with client.stream("GET", url, params=params, headers=self.headers) as response:
            if response.status_code != 200:
                raise TransferFailed(f"{self.label}: GET {mib} MiB: {response.status_code}")
            for chunk in response.iter_raw():
                digest.update(chunk)
        elapsed = time.perf_counter() - start
        if digest.size != mib * MIB or digest.hexdigest() != expected_digest(mib):
            raise TransferFailed(f"{self.label}: GET {mib} MiB returned other bytes")
        self.record_transfer("GET", mib, elapsed, baseline)

    def evict(self, client: httpx.Client, key: str) -> None:
        url, params = self.route(key)
        if self.kind == "ours":
            response = client.delete(url, headers=self.headers)
        else:
            response = client.post(f"{url}/evict", params=params)
        response.raise_for_status()

    def record_transfer(self, method: str, mib: int, elapsed: float, baseline: int) -> None:
        size = size_name(mib)
        self.figures.setdefault(f"{method} {size}", []).append(mib / elapsed)
        growth = (peak(self.pid) - baseline) / MIB
        name = f"RSS {method} {size}"
        self.figures[name] = [max([growth, *self.figures.get(name, [])])]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def median(self, name: str) -> float:
        values = self.figures.get(name)
        return statistics.median(values) if values else float("nan")


def size_name(mib: int) -> str:
    return next((name for name, size in SIZES.items() if size == mib), f"{mib} MiB")


# The storage API, in a process of its own.


def api_probe(alias: str, directory: str, pg_name: str, sizes: list[int], rounds: int) -> None:
    """Write and stream each size through ORMStorage on alias; print the figures as JSON."""
    from bench.storage import configure_django

    configure_django(directory, pg_name)
    from django.core.management import call_command

    from blobstore.storage import ORMStorage

    call_command("migrate", database=alias, verbosity=0)
    store = ORMStorage(using=alias, max_object_size=None)
    figures: dict[str, list[float]] = {}

    async def chunks(mib: int) -> AsyncIterator[bytes]:
        for block in body(mib):
            yield block

    async def run() -> None:
        await store.set("warm", b"x")  # open the connection
        for mib in sizes:
            size = size_name(mib)
            for number in range(rounds):
                key = f"api/{mib}/{number}"
                baseline = reset_peak()
                start = time.perf_counter()
                info = await store.write(key, chunks(mib))
                elapsed = time.perf_counter() - start
                growth = (peak() - baseline) / MIB
                assert info is not None and info.sha256 == expected_digest(mib)
                figures.setdefault(f"set {size}", []).append(mib / elapsed)
                figures[f"RSS set {size}"] = [max([growth, *figures.get(f"RSS set {size}", [])])]
                digest = Digest()
                baseline = reset_peak()
                start = time.perf_counter()
                stream = await store.stream(key)
                assert stream is not None
                async with stream:
                    async for chunk in stream:
                        digest.update(chunk)
                elapsed = time.perf_counter() - start
                growth = (peak() - baseline) / MIB
                assert digest.size == mib * MIB and digest.hexdigest() == expected_digest(mib)
                figures.setdefault(f"get {size}", []).append(mib / elapsed)
                figures[f"RSS get {size}"] = [max([growth, *figures.get(f"RSS get {size}", [])])]
                await store.evict(key)

    asyncio.run(run())
    print(json.dumps(figures))


def measure_api(directory: str, pg_name: str, sizes: list[int], rounds: int) -> dict[str, Any]:
    results = {}
    for label, alias in API_BACKENDS.items():
        done = subprocess.run(
            [sys.executable, __file__, "--api-probe", alias, directory, pg_name,
             ",".join(map(str, sizes)), str(rounds)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stderr}")
        results[label] = json.loads(done.stdout)
    return results


# The report


def report(sites: list[Site], api: dict[str, dict[str, list[float]]], quick: bool) -> None:
    sizes = ["100 MiB"] if quick else list(SIZES)
    print("\nHTTP, httpx streaming both ways (median MiB/s; RSS: the server's peak growth, MiB)")
    print(f"{'':<16}" + "".join(f"{site.label:>15}" for site in sites))
    for size in sizes:
        for name in (f"PUT {size}", f"GET {size}", f"RSS PUT {size}", f"RSS GET {size}"):
            values = [site.median(name) for site in sites]
            if all(value != value for value in values):  # all NaN: not measured
                continue
            cells = "".join(
                f"{'-':>15}" if value != value else f"{value:>15,.0f}" for value in values
            )
            print(f"{name:<16}{cells}")
    print("\nstorage API, ORMStorage.write / .stream in-process (median MiB/s; RSS growth MiB)")
    print(f"{'':<16}" + "".join(f"{label:>15}" for label in api))
    for size in sizes:
        for name in (f"set {size}", f"get {size}", f"RSS set {size}", f"RSS get {size}"):
            row = "".join(f"{statistics.median(api[label][name]):>15,.0f}" for label in api)
            print(f"{name:<16}{row}")

    by_label = {site.label: site for site in sites}
    print("\nratios, 100 MiB over HTTP, ours / theirs")
    checks: list[tuple[str, bool | None]] = []
    for label in ("ours-sqlite", "ours-pg"):
        ours = by_label[label]
        ratios: list[str] = []
        for other in ("theirs-sqlite", "theirs-dict"):
            pair = []
            for method in ("PUT", "GET"):
                name = f"{method} 100 MiB"
                ratio = ours.median(name) / by_label[other].median(name)
                pair.append(f"{method} {ratio:.2f}x")
                if other == "theirs-sqlite":
                    checks.append(
                        (f"{label} {name} >= 1.0x theirs-sqlite ({ratio:.2f}x)", ratio >= 1.0)
                    )
            ratios.append(f"vs {other}: {' '.join(pair)}")
        print(f"  {label:<12}" + "   ".join(ratios))
    for label in ("ours-sqlite", "ours-pg"):
        site = by_label[label]
        if quick:
            checks.append((f"{label}: 1 GiB PUT and GET, peak RSS growth < "
                           f"{RSS_LIMIT_MIB} MiB (not run with --quick)", None))  # fmt: skip
            continue
        growth = max(site.median("RSS PUT 1 GiB"), site.median("RSS GET 1 GiB"))
        done = "PUT 1 GiB" in site.figures and "GET 1 GiB" in site.figures
        checks.append(
            (f"{label}: 1 GiB PUT and GET succeed, peak RSS growth {growth:.0f} MiB < "
             f"{RSS_LIMIT_MIB} MiB", done and growth < RSS_LIMIT_MIB)
        )  # fmt: skip
    rate = statistics.median(api["api-orm-pg"]["set 100 MiB"])
    checks.append((f"ORMStorage on PostgreSQL, 100 MiB set {rate:.0f} MiB/s >= 100", rate >= 100))
    print("\ntargets (issue 4)")
    for text, passed in checks:
        print(f"  {'SKIP' if passed is None else 'PASS' if passed else 'MISS'}  {text}")


# The run


def measure_http(sites: list[Site], rounds: int, quick: bool) -> None:
    with httpx.Client(timeout=600) as client:
        for site in sites:  # warm up: the connection, the first chunked write
            site.put(client, "warm", 2)
            site.get(client, "warm", 2)
            site.figures.clear()
        for number in range(rounds):
            turn = sites[number % len(sites) :] + sites[: number % len(sites)]
            for site in turn:
                key = f"bench/100/{number}"
                site.put(client, key, 100)
                site.get(client, key, 100)
                site.evict(client, key)
        if quick:
            return
        for site in sites:
            if site.kind == "ours":  # their endpoints hold a blob whole in memory
                try:
                    site.put(client, "bench/1024", 1024)
                    site.get(client, "bench/1024", 1024)
                except (TransferFailed, httpx.HTTPError) as error:
                    print(f"  {site.label}: 1 GiB failed: {error}")
                site.evict(client, "bench/1024")


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--api-probe":
        alias, directory, pg_name, probe_sizes, probe_rounds = sys.argv[2:]
        api_probe(
            alias, directory, pg_name, [int(n) for n in probe_sizes.split(",")], int(probe_rounds)
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 MiB only, one round")
    quick = parser.parse_args().quick
    rounds = 1 if quick else 5
    sizes = [100] if quick else [100, 1024]
    import django
    import proxystore

    print(f"python {sys.version.split()[0]}, Django {django.__version__}, ProxyStore "
          f"{proxystore.__version__}, psycopg {psycopg.__version__}, httpx {httpx.__version__}; "
          f"{' '.join(sys.argv)}")  # fmt: skip
    print(f"{rounds} round(s) of 100 MiB" + ("" if quick else "; 1 GiB once per server of ours"))
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    with (
        postgres_database("blobstore_bench_large") as pg_name,
        tempfile.TemporaryDirectory(dir=var) as home,
    ):
        pg_url = ADMIN_URL.rsplit("/", 1)[0] + f"/{pg_name}"
        sites = [
            Site("theirs-dict", "theirs", "dict", Path(home), free_port()),
            Site("theirs-sqlite", "theirs", "sqlite", Path(home), free_port()),
            Site("ours-sqlite", "ours", "orm", Path(home), free_port()),
            Site("ours-pg", "ours", "orm", Path(home), free_port(), database_url=pg_url),
        ]
        try:
            for site in sites:
                site.start()
            measure_http(sites, rounds, quick)
        finally:
            for site in sites:
                site.stop()
        api = measure_api(home, pg_name, sizes, rounds)
        report(sites, api, quick)


if __name__ == "__main__":
    main()
